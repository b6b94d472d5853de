"""Diffusion priors, score distillation and timestep schedules, each written once and combinable.

- :mod:`.priors`: thin classes over diffusers models (SD, Zero123, MVDream, ControlNet) sharing one interface.
- :mod:`.distillation`: SDS, CSD, VSD/BSD and MVDream's x0-reconstruction, over any prior.
- :mod:`.schedules`: timestep schedules (uniform, linear/sqrt anneal, DreamTime).
- :mod:`.tiny`: tiny random models in the real hub layouts (the weights registry's factories).
"""
