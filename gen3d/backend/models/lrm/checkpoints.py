"""Published LRM checkpoints <-> our module names, and the loaders/savers of both published layouts.

- OpenLRM (``zxhezexin/openlrm-mix-{small,base,large}-1.1``): ``config.json`` (ModelLRM's constructor kwargs) +
  ``model.safetensors``. Cross-attention is ``nn.MultiheadAttention``: packed ``in_proj_weight [3D, D]`` when the
  image-feature width equals the transformer width (base), separate ``{q,k,v}_proj_weight`` otherwise (small, large).
- TripoSR (``stabilityai/TripoSR``): ``config.yaml`` + ``model.ckpt``, a pickled state_dict loaded here with
  ``torch.load(weights_only=True)`` (tensors only, no code). Its ViT keys use transformers-4.x names
  (``encoder.layer.N.attention.attention.query``); transformers-5 names (``layers.N.attention.q_proj``) are accepted
  too. The pooler is unused by TripoSR and dropped.

Conversions are plain functions on ``dict[str, Tensor]`` (they work on ``meta`` tensors too, which is how the tests
check the full-size key lists without allocating).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ...errors import BadInput, MissingWeights
from ...files import atomic_path, write_bytes, write_json
from .config import LRMConfig, from_openlrm_config, from_triposr_config
from .model import LRM

StateDict = dict[str, torch.Tensor]
N = r"(\d+)"

# (published prefix, our prefix); "{}" is a layer index. First match wins, so longer prefixes come first.
OPENLRM_RENAMES: list[tuple[str, str]] = [
    ("encoder.model.", "encoder."),
    ("camera_embedder.mlp.", "camera_embedder."),
    ("transformer.layers.{}.norm1.norm.", "transformer.blocks.{}.norm_cross.norm."),
    ("transformer.layers.{}.norm1.mlp.1.", "transformer.blocks.{}.norm_cross.mod."),
    ("transformer.layers.{}.norm2.norm.", "transformer.blocks.{}.norm_self.norm."),
    ("transformer.layers.{}.norm2.mlp.1.", "transformer.blocks.{}.norm_self.mod."),
    ("transformer.layers.{}.norm3.norm.", "transformer.blocks.{}.norm_ff.norm."),
    ("transformer.layers.{}.norm3.mlp.1.", "transformer.blocks.{}.norm_ff.mod."),
    ("transformer.layers.{}.cross_attn.out_proj.", "transformer.blocks.{}.cross_attn.out."),
    ("transformer.layers.{}.self_attn.out_proj.", "transformer.blocks.{}.self_attn.out."),
    ("transformer.layers.{}.cross_attn.", "transformer.blocks.{}.cross_attn."),  # split q/k/v, see below
    ("transformer.layers.{}.self_attn.", "transformer.blocks.{}.self_attn."),
    ("transformer.layers.{}.mlp.0.", "transformer.blocks.{}.ff.fc1."),
    ("transformer.layers.{}.mlp.3.", "transformer.blocks.{}.ff.fc2."),
    ("transformer.norm.", "transformer.out_norm."),
    ("pos_embed", "transformer.tokens"),
    ("upsampler.", "upsampler."),
    ("synthesizer.decoder.net.", "nerf.net."),
]

_VIT4 = "image_tokenizer.model.encoder.layer.{}."
_VIT5 = "image_tokenizer.model.layers.{}."
TRIPOSR_RENAMES: list[tuple[str, str]] = [
    ("image_tokenizer.model.embeddings.cls_token", "encoder.cls_token"),
    ("image_tokenizer.model.embeddings.position_embeddings", "encoder.pos_embed"),
    ("image_tokenizer.model.embeddings.patch_embeddings.projection.", "encoder.patch_embed.proj."),
    (_VIT4 + "attention.output.dense.", "encoder.blocks.{}.attn.proj."),
    (_VIT4 + "intermediate.dense.", "encoder.blocks.{}.mlp.fc1."),
    (_VIT4 + "output.dense.", "encoder.blocks.{}.mlp.fc2."),
    (_VIT4 + "layernorm_before.", "encoder.blocks.{}.norm1."),
    (_VIT4 + "layernorm_after.", "encoder.blocks.{}.norm2."),
    (_VIT5 + "attention.o_proj.", "encoder.blocks.{}.attn.proj."),
    (_VIT5 + "mlp.fc1.", "encoder.blocks.{}.mlp.fc1."),
    (_VIT5 + "mlp.fc2.", "encoder.blocks.{}.mlp.fc2."),
    (_VIT5 + "layernorm_before.", "encoder.blocks.{}.norm1."),
    (_VIT5 + "layernorm_after.", "encoder.blocks.{}.norm2."),
    ("image_tokenizer.model.layernorm.", "encoder.norm."),
    ("tokenizer.embeddings", "transformer.tokens"),
    ("backbone.norm.", "transformer.in_norm."),
    ("backbone.proj_in.", "transformer.proj_in."),
    ("backbone.proj_out.", "transformer.proj_out."),
    ("backbone.transformer_blocks.{}.norm1.", "transformer.blocks.{}.norm_self.norm."),
    ("backbone.transformer_blocks.{}.norm2.", "transformer.blocks.{}.norm_cross.norm."),
    ("backbone.transformer_blocks.{}.norm3.", "transformer.blocks.{}.norm_ff.norm."),
    ("backbone.transformer_blocks.{}.attn1.to_out.0.", "transformer.blocks.{}.self_attn.out."),
    ("backbone.transformer_blocks.{}.attn2.to_out.0.", "transformer.blocks.{}.cross_attn.out."),
    ("backbone.transformer_blocks.{}.attn1.to_", "transformer.blocks.{}.self_attn."),
    ("backbone.transformer_blocks.{}.attn2.to_", "transformer.blocks.{}.cross_attn."),
    ("backbone.transformer_blocks.{}.ff.net.0.proj.", "transformer.blocks.{}.ff.fc1."),
    ("backbone.transformer_blocks.{}.ff.net.2.", "transformer.blocks.{}.ff.fc2."),
    ("post_processor.upsample.", "upsampler."),
    ("decoder.layers.", "nerf.net."),
]
#: published TripoSR tensors that TripoSR never uses (transformers' ViT pooler): dropped on load
TRIPOSR_UNUSED = re.compile(r"^image_tokenizer\.model\.pooler\.")
_VIT_QKV = re.compile(r"^image_tokenizer\.model\.(?:encoder\.layer|layers)\.(\d+)\.attention\."
                      r"(?:attention\.(query|key|value)|(q_proj|k_proj|v_proj))\.(weight|bias)$")


def compile_renames(renames: list[tuple[str, str]], inverse: bool) -> list[tuple[re.Pattern, str]]:
    out = []
    for published, ours in renames:
        src, dst = (ours, published) if inverse else (published, ours)
        out.append((re.compile("^" + re.escape(src).replace(r"\{\}", N)), dst.replace("{}", r"\1")))
    return out


def rename_keys(sd: StateDict, rules: list[tuple[re.Pattern, str]], what: str) -> StateDict:
    out: StateDict = {}
    for key, t in sd.items():
        for pat, repl in rules:
            m = pat.match(key)
            if m:
                out[pat.sub(repl, key, count=1)] = t
                break
        else:
            raise BadInput(f"{what}: unexpected tensor {key!r}", {"key": key})
    return out


# --- OpenLRM ----------------------------------------------------------------------------------------------------
def split_multihead_attention(out: StateDict) -> StateDict:
    """``nn.MultiheadAttention`` weights (already under our attention prefixes) -> our ``q/k/v`` Linear weights:
    packed ``in_proj_weight`` split in three, separate ``{q,k,v}_proj_weight`` renamed."""
    for key in [k for k in out if k.endswith(("attn.in_proj_weight", "attn.in_proj_bias"))]:
        base, kind = key.rsplit(".in_proj_", 1)
        for name, part in zip("qkv", out.pop(key).chunk(3, dim=0)):
            out[f"{base}.{name}.{kind}"] = part
    for key in [k for k in out if re.search(r"attn\.[qkv]_proj_weight$", k)]:
        base, name = key.rsplit(".", 1)
        out[f"{base}.{name[0]}.weight"] = out.pop(key)
    return out


def pack_multihead_attention(sd: StateDict) -> StateDict:
    """Inverse of :func:`split_multihead_attention`: q/k/v packed into ``in_proj_weight`` exactly when
    nn.MultiheadAttention packs them (key/value width == query width)."""
    sd = dict(sd)
    for qkey in [k for k in sd if re.search(r"attn\.q\.weight$", k)]:
        base = qkey[: -len(".q.weight")]
        q, k, v = (sd.pop(f"{base}.{n}.weight") for n in "qkv")
        if k.shape[1] == q.shape[1]:
            sd[f"{base}.in_proj_weight"] = torch.cat([q, k, v])
        else:
            sd.update({f"{base}.q_proj_weight": q, f"{base}.k_proj_weight": k, f"{base}.v_proj_weight": v})
    return sd


def openlrm_to_ours(sd: StateDict) -> StateDict:
    """OpenLRM ``model.safetensors`` names -> our names (packed ``in_proj_weight`` split into q/k/v)."""
    return split_multihead_attention(rename_keys(sd, compile_renames(OPENLRM_RENAMES, False), "OpenLRM checkpoint"))


def ours_to_openlrm(sd: StateDict) -> StateDict:
    """Inverse of :func:`openlrm_to_ours`."""
    return rename_keys(pack_multihead_attention(sd), compile_renames(OPENLRM_RENAMES, True), "LRM state_dict")


# --- TripoSR ----------------------------------------------------------------------------------------------------
def join_vit_qkv(sd: StateDict, pattern: re.Pattern, what: str) -> tuple[StateDict, StateDict]:
    """Split off a transformers-ViT state's separate query/key/value tensors (``pattern`` groups: layer, one or more
    alternative name groups (query/q_proj ...), weight|bias) and concatenate them into our
    ``encoder.blocks.N.attn.qkv``; returns (rest, joined)."""
    rest: StateDict = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        m = pattern.match(key)
        if m:
            layer, *names, kind = m.groups()
            parts.setdefault((layer, kind), {})[next(n for n in names if n)[0]] = t
        else:
            rest[key] = t
    joined: StateDict = {}
    for (layer, kind), p in parts.items():
        if set(p) != {"q", "k", "v"}:
            raise BadInput(f"{what}: ViT layer {layer} {kind} lacks one of query/key/value", {"layer": layer})
        joined[f"encoder.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([p["q"], p["k"], p["v"]])
    return rest, joined


def split_vit_qkv(sd: StateDict, prefix: str) -> StateDict:
    """Inverse of :func:`join_vit_qkv` with transformers-4.x names under ``prefix`` (e.g. ``encoder.model.``)."""
    out: StateDict = {}
    for key in [k for k in sd if re.match(r"encoder\.blocks\.\d+\.attn\.qkv\.", k)]:
        layer, kind = re.match(r"encoder\.blocks\.(\d+)\.attn\.qkv\.(\w+)", key).groups()
        for name, part in zip(("query", "key", "value"), sd.pop(key).chunk(3, dim=0)):
            out[f"{prefix}encoder.layer.{layer}.attention.attention.{name}.{kind}"] = part
    return out


def triposr_to_ours(sd: StateDict) -> StateDict:
    """TripoSR ``model.ckpt`` names -> ours: ViT q/k/v concatenated into ``qkv``, triplane tokens
    ``[3, C, r, r]`` -> ``[1, 3*r*r, C]``, pooler dropped."""
    rest, qkv = join_vit_qkv({k: t for k, t in sd.items() if not TRIPOSR_UNUSED.match(k)}, _VIT_QKV,
                             "TripoSR checkpoint")
    out = {**rename_keys(rest, compile_renames(TRIPOSR_RENAMES, False), "TripoSR checkpoint"), **qkv}
    tok = out["transformer.tokens"]
    out["transformer.tokens"] = tok.permute(0, 2, 3, 1).reshape(1, -1, tok.shape[1])
    return out


def ours_to_triposr(sd: StateDict, low_res: int) -> StateDict:
    """Inverse of :func:`triposr_to_ours` with transformers-4.x ViT names (the published layout); the pooler that
    TripoSR's ViTModel carries is written as zeros so that the official code loads the file strictly."""
    sd = dict(sd)
    out = split_vit_qkv(sd, "image_tokenizer.model.")
    tok = sd.pop("transformer.tokens")
    sd["transformer.tokens"] = tok.reshape(3, low_res, low_res, -1).permute(0, 3, 1, 2)
    rules = [(p, r) for p, r in compile_renames(TRIPOSR_RENAMES, True) if "model.layers" not in r]  # 4.x names only
    out.update(rename_keys(sd, rules, "LRM state_dict"))
    d = out["image_tokenizer.model.embeddings.cls_token"].shape[-1]
    out["image_tokenizer.model.pooler.dense.weight"] = torch.zeros(d, d)
    out["image_tokenizer.model.pooler.dense.bias"] = torch.zeros(d)
    return out


# --- loading ----------------------------------------------------------------------------------------------------
def build_from_state(cfg: LRMConfig, sd: StateDict, where: Path, model_class: type[LRM] = LRM) -> LRM:
    """``model_class(cfg)`` holding ``sd`` (our names; every tensor present with its shape, else one BadInput)."""
    with torch.device("meta"):
        model = model_class(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise BadInput(f"{where}: checkpoint does not match its config "
                       f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong shapes; first: "
                       f"{(missing + unexpected + wrong)[0]!r})",
                       {"path": str(where), "missing": missing[:20], "unexpected": unexpected[:20],
                        "wrong_shape": wrong[:20]})
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    return model.eval()


def read_torch_checkpoint(ckpt: Path) -> StateDict:
    """A pickled state_dict (or a Lightning checkpoint's ``state_dict``), read with ``torch.load(weights_only=True)``:
    tensors and plain containers only, never code."""
    try:
        sd = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a non-tensor pickle is refused by weights_only
        raise BadInput(f"{ckpt}: not a tensors-only checkpoint ({type(e).__name__}: {e})", {"path": str(ckpt)}) from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingWeights(f"{what} not found at {path}", {"path": str(path)})
    return path


def load_openlrm(folder: str | Path) -> LRM:
    """An OpenLRM hub folder (``config.json`` + ``model.safetensors``) -> LRM in eval mode on the CPU."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = from_openlrm_config(json.loads(_need(folder / "config.json", "OpenLRM config.json").read_text()))
    sd = load_file(str(_need(folder / "model.safetensors", "OpenLRM model.safetensors")))
    return build_from_state(cfg, openlrm_to_ours(sd), folder)


def resolve_interpolations(cfg: dict[str, Any]) -> dict[str, Any]:
    """Resolve OmegaConf-style ``${a.b}`` references of a parsed YAML (TripoSR's config uses one)."""
    def lookup(path: str) -> Any:
        node: Any = cfg
        for part in path.split("."):
            node = node[part]
        return node

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, str):
            m = re.fullmatch(r"\$\{([\w.]+)\}", node)
            return walk(lookup(m.group(1))) if m else node
        return node

    return walk(cfg)


def read_triposr_config(path: Path) -> LRMConfig:
    import yaml

    return from_triposr_config(resolve_interpolations(yaml.safe_load(path.read_text())))


def load_triposr(folder: str | Path) -> LRM:
    """A TripoSR hub folder (``config.yaml`` + ``model.ckpt``) -> LRM in eval mode on the CPU (tensors-only load)."""
    folder = Path(folder)
    cfg = read_triposr_config(_need(folder / "config.yaml", "TripoSR config.yaml"))
    sd = read_torch_checkpoint(_need(folder / "model.ckpt", "TripoSR model.ckpt"))
    return build_from_state(cfg, triposr_to_ours(sd), folder)


def detect_family(folder: str | Path) -> str:
    folder = Path(folder)
    if (folder / "model.ckpt").exists() or (folder / "config.yaml").exists():
        return "triposr"
    return "openlrm"


def load_lrm(folder: str | Path) -> LRM:
    """Either published layout, told apart by its files."""
    return load_triposr(folder) if detect_family(folder) == "triposr" else load_openlrm(folder)


# --- saving (tiny test models, conversions) ---------------------------------------------------------------------
def save_openlrm(model: LRM, folder: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config.json`` (``config``: ModelLRM's kwargs, plus our optional extras) and ``model.safetensors``
    with the published key names."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in ours_to_openlrm(model.state_dict()).items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(sd, str(tmp))
    write_json(folder / "config.json", config)
    return folder


def save_triposr(model: LRM, folder: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config.yaml`` (TripoSR's schema; ``config``) and ``model.ckpt`` (a plain ``torch.save`` of the
    published-name state_dict)."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in ours_to_triposr(model.state_dict(),
                                                                  model.cfg.triplane_low_res).items()}
    with atomic_path(folder / "model.ckpt") as tmp:
        torch.save(sd, tmp)
    write_bytes(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    return folder

