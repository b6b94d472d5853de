"""Gen3D backend: the local service and the library behind it.

Data flows one way: ``api -> pipelines -> (guidance, models, representations, geometry) -> kernels``.
"""

__version__ = "0.1.0"
API_VERSION = 1
