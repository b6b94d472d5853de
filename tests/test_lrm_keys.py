"""Every tensor of the published OpenLRM (small/base/large) and TripoSR checkpoints maps onto our LRM modules.

The official key lists (tests/data/checkpoint_keys, made by constructing the official model classes) are turned
into ``meta`` tensors, converted with the loaders' own conversion, and compared name-by-name and shape-by-shape with
the real-size LRM built on the ``meta`` device (nothing is allocated). The inverse conversion must give back exactly
the published names and shapes (that is what the tiny factories write).
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from gen3d.backend.models.lrm import LRM, OPENLRM_HUB_CONFIGS, TRIPOSR_HUB_CONFIG, from_openlrm_config, from_triposr_config
from gen3d.backend.models.lrm.checkpoints import (TRIPOSR_UNUSED, openlrm_to_ours, ours_to_openlrm, ours_to_triposr,
                                            triposr_to_ours)

CASES = {
    "openlrm-mix-small-1.1": ("openlrm", OPENLRM_HUB_CONFIGS["small"]),
    "openlrm-mix-base-1.1": ("openlrm", OPENLRM_HUB_CONFIGS["base"]),
    "openlrm-mix-large-1.1": ("openlrm", OPENLRM_HUB_CONFIGS["large"]),
    "triposr": ("triposr", TRIPOSR_HUB_CONFIG),
}


@functools.lru_cache(maxsize=None)
def _meta_model(name):
    family, hub = CASES[name]
    cfg = from_openlrm_config(hub) if family == "openlrm" else from_triposr_config(hub)
    with torch.device("meta"):
        return LRM(cfg)


def _published(data_dir, name):
    d = json.loads((data_dir / "checkpoint_keys" / f"{name}.json").read_text())
    return d, {k: torch.empty(v, device="meta") for k, v in d["tensors"].items()}


@pytest.mark.parametrize("name", list(CASES))
def test_published_keys_map_onto_our_modules(data_dir, name):
    family, hub = CASES[name]
    record, published = _published(data_dir, name)
    if family == "openlrm":
        assert record["config"] == hub, "our copy of the hub config differs from the one the key list was made with"
    model = _meta_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = openlrm_to_ours(published) if family == "openlrm" else triposr_to_ours(published)
    converted = {k: tuple(v.shape) for k, v in converted.items()}
    assert sorted(set(ours) - set(converted)) == []
    assert sorted(set(converted) - set(ours)) == []
    assert {k: s for k, s in converted.items() if ours[k] != s} == {}
    # every published element is used, except TripoSR's ViT pooler (documented as dropped)
    n_published = sum(t.numel() for k, t in published.items() if not TRIPOSR_UNUSED.match(k))
    assert sum(p.numel() for p in model.parameters()) == n_published


@pytest.mark.parametrize("name", list(CASES))
def test_inverse_conversion_gives_the_published_layout(data_dir, name):
    family, _ = CASES[name]
    record, _ = _published(data_dir, name)
    model = _meta_model(name)
    sd = model.state_dict()
    back = ours_to_openlrm(sd) if family == "openlrm" else ours_to_triposr(sd, model.cfg.triplane_low_res)
    assert {k: list(v.shape) for k, v in back.items()} == record["tensors"]


def test_cross_attention_form_follows_the_widths(data_dir):
    """The README trap: packed in_proj_weight only where encoder width == transformer width (base)."""
    for name, packed in (("openlrm-mix-small-1.1", False), ("openlrm-mix-base-1.1", True),
                         ("openlrm-mix-large-1.1", False)):
        keys = json.loads((data_dir / "checkpoint_keys" / f"{name}.json").read_text())["tensors"]
        assert ("transformer.layers.0.cross_attn.in_proj_weight" in keys) == packed
        back = ours_to_openlrm(_meta_model(name).state_dict())
        assert ("transformer.layers.0.cross_attn.in_proj_weight" in back) == packed
