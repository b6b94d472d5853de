"""The reconstruction backbone as shared stages, reused by every generator.

posed RGBA views --:mod:`fit_gaussians`--> Gaussians --:mod:`extract_mesh`--> mesh --:mod:`uv_unwrap`--> UVs
--:mod:`bake_texture`--> texture --:mod:`refine_texture`--> refined texture --:mod:`export`--> files.

Each stage is a plain function with typed inputs and outputs; pipelines compose them.
"""
