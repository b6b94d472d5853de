"""LRM (Large Reconstruction Model): one image -> a triplane NeRF in one forward pass.

Both published families, OpenLRM (small/base/large, CC BY-NC weights) and TripoSR (MIT weights), are built from one
configurable module family (:class:`LRM`, :class:`LRMConfig`) and loaded from their hub layouts unchanged
(:func:`load_lrm`).
"""

from .checkpoints import load_lrm, load_openlrm, load_triposr, save_openlrm, save_triposr
from .config import (OPENLRM_HUB_CONFIGS, TRIPOSR_HUB_CONFIG, LRMConfig, from_openlrm_config,
                     from_triposr_config)
from .model import LRM
from .tiny import tiny_factories

__all__ = ["LRM", "LRMConfig", "OPENLRM_HUB_CONFIGS", "TRIPOSR_HUB_CONFIG", "from_openlrm_config",
           "from_triposr_config", "load_lrm", "load_openlrm", "load_triposr", "save_openlrm", "save_triposr",
           "tiny_factories"]
