"""Gen3D: one import namespace for the backend (``gen3d.backend``) and the rasterizers (``gen3d.kernels``).

Everything Gen3D installs lives under ``gen3d`` so that no import name of ours can shadow another distribution's
(Hugging Face's ``kernels``, imported by transformers, is the one that did).
"""
