"""Textual inversion: one new token whose embedding makes Stable Diffusion describe the reference object.

diffusers' conventions (``examples/textual_inversion``): a placeholder token is added to the tokenizer and the text
encoder's embedding table, initialised from an initializer word, and only that row is trained with the ordinary
denoising loss (epsilon; a v-prediction model's output is converted to epsilon by the prior; ``t`` uniform over the
training steps) on the image under object templates ("a photo of a {}", ...). The result is saved as
``learned_embeds.safetensors``, ``{token: [1, D]}``, the file diffusers' ``load_textual_inversion`` reads. Magic123
then prompts with "A high-resolution DSLR image of <token>".

The image is augmented each step (random background grey level, horizontal flip, scale and shift), since one view is
all there is. The row is kept as a float32 parameter and substituted into the embedding output by a forward hook,
so training is fp32 even when the prior runs in fp16; it is written into the table when training ends.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...files import atomic_path
from ...guidance.priors.base import Condition
from ..base import RunContext

log = logging.getLogger(__name__)

#: object templates (a subset of diffusers' ``imagenet_templates_small``)
TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
             "a photo of a clean {}", "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}")
#: Magic123's prompt around the learned token
PROMPT = "A high-resolution DSLR image of {}"


@dataclass
class TextualInversionConfig:
    steps: int = 3000
    lr: float = 5e-4               #: diffusers' example rate (AdamW on the new row only)
    initializer: str = "object"    #: word whose embedding (mean over its tokens) starts the new one
    scale_range: tuple[float, float] = (0.8, 1.1)   #: random zoom of the augmented image
    shift: float = 0.1            #: random shift, fraction of the side


def placeholder_for(rgba: torch.Tensor) -> str:
    """A token name unique to the image, so a cached prior can hold tokens of several jobs."""
    return f"<m123-{hashlib.sha1(rgba.detach().cpu().numpy().tobytes()).hexdigest()[:8]}>"


def _augment(rgba: torch.Tensor, size: int, cfg: TextualInversionConfig, generator: torch.Generator) -> torch.Tensor:
    """``rgba [1,4,S,S]`` straight -> ``[1,3,size,size]`` on a random grey, randomly flipped, zoomed and shifted."""
    r = torch.rand(5, generator=generator)
    grey = 0.5 + 0.5 * r[0]
    rgb = rgba[:, :3] * rgba[:, 3:] + grey * (1 - rgba[:, 3:])
    if r[1] < 0.5:
        rgb = rgb.flip(-1)
    zoom = cfg.scale_range[0] + (cfg.scale_range[1] - cfg.scale_range[0]) * float(r[2])
    theta = torch.tensor([[[1 / zoom, 0, cfg.shift * (2 * float(r[3]) - 1)],
                           [0, 1 / zoom, cfg.shift * (2 * float(r[4]) - 1)]]], dtype=rgb.dtype)
    grid = F.affine_grid(theta, (1, 3, size, size), align_corners=False)
    padded = F.grid_sample(rgb - grey, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (padded + grey).clamp(0, 1)


def learn_token(prior, rgba: torch.Tensor, cfg: TextualInversionConfig, generator: torch.Generator,
                ctx: RunContext) -> tuple[str, torch.Tensor, Path]:
    """Learn a token for the object in ``rgba [1,4,S,S]`` (straight RGBA in [0,1]) on ``prior`` (a
    :class:`StableDiffusionPrior`), install it in the prior's text encoder and save it to
    ``ctx.out_dir/learned_embeds.safetensors``. Progress as stage ``textual_inversion``. Returns
    ``(token, embedding [D] float32, path)``."""
    from safetensors.torch import save_file

    tokenizer, encoder = prior.text.tokenizer, prior.text.model
    token = placeholder_for(rgba)
    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    table = encoder.get_input_embeddings()
    if token_id >= table.weight.shape[0]:
        encoder.resize_token_embeddings(len(tokenizer))
        table = encoder.get_input_embeddings()
    init_ids = tokenizer(cfg.initializer, add_special_tokens=False).input_ids
    row = torch.nn.Parameter(table.weight[init_ids].detach().float().mean(0).clone())
    opt = torch.optim.AdamW([row], lr=cfg.lr)

    def substitute(module, args, output):
        hit = (args[0] == token_id)[..., None]
        return torch.where(hit, row.to(output.dtype), output)

    hook = table.register_forward_hook(substitute)
    ids_cache: dict[str, torch.Tensor] = {}
    try:
        for step in range(1, cfg.steps + 1):
            ctx.check_cancelled()
            text = TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=generator))].format(token)
            if text not in ids_cache:
                ids_cache[text] = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length,
                                            truncation=True, return_tensors="pt").input_ids.to(prior.device)
            with torch.no_grad():
                z = prior.encode(_augment(rgba.float().cpu(), prior.image_size, cfg, generator))
            noise = torch.randn(z.shape, generator=generator).to(z)
            t = torch.randint(0, prior.num_train_timesteps, (1,), generator=generator).to(prior.device)
            z_t = prior.add_noise(z, noise, t)
            cond = Condition({"cond": {"encoder_hidden_states": encoder(ids_cache[text])[0]}})
            loss = F.mse_loss(prior.predict(z_t, t, cond, ("cond",))[0], noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ctx.progress("textual_inversion", step, cfg.steps)
    finally:
        hook.remove()
    with torch.no_grad():
        table.weight[token_id] = row.detach().to(table.weight.dtype)
    embedding = row.detach().float().cpu()
    path = Path(ctx.out_dir) / "learned_embeds.safetensors"
    with atomic_path(path) as tmp:
        save_file({token: embedding[None].contiguous()}, str(tmp), metadata={"format": "pt"})
    log.info("textual inversion: %s learned in %d steps", token, cfg.steps)
    return token, embedding, path
