"""Networks that diffusers/transformers do not provide, and their checkpoint loaders."""
