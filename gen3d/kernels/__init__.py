"""Differentiable rasterizers as plain tensor functions (torch everywhere, gsplat / nvdiffrast on CUDA).

``kernels`` knows nothing of ``backend``.
"""
