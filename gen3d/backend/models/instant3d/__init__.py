"""Instant3D: text -> a 2x2 grid of four views (a fine-tuned text-to-image model sampled from a Gaussian-blob
initialisation) -> a sparse-view reconstructor (LRM's modules, camera-modulated encoder, views concatenated) -> a
triplane NeRF. InstantMesh's NeRF reconstructor weights (Apache-2.0) load into the reconstructor."""
