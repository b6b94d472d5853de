"""The training loop, written once for every recipe, on Hugging Face Accelerate.

:func:`prepare` checks everything a run needs (recipe, preset and options, the data folder, the output folder)
before anything is written; :func:`train` then runs in each process (one, ``--num-processes N`` local ones, or
those of ``accelerate launch`` on several machines). Accelerate does the distribution (DDP with gloo on CPU and
NCCL on CUDA, or DeepSpeed/FSDP from its own config file), mixed precision, gradient accumulation and the state
files; no process-group code is written here.

Output folder (written by the main process only):

- ``run.json``: recipe, preset, options, data folder, number of processes;
- ``metrics.jsonl``: one object per logged step: ``step``, ``loss`` and the recipe's loss terms (means over the
  step's micro-batches and processes), ``lr``, ``world_size``, ``samples_per_s``, and ``eval_*`` at evaluation steps;
- ``checkpoints/step_N/``: ``Accelerator.save_state`` (model, optimiser, scheduler, RNG states, the step counter
  and the EMA weights), written under a temporary name and renamed; the data position is ``N x grad_accum`` batches
  of the keyed sampler (``training/data.py``), so ``--resume`` continues bit for bit;
- ``eval/step_N.png``: the recipe's evaluation render;
- ``weights/<entry>/``: the trained model in the layout its method's loader reads (replaced at the end of a run), so
  ``GEN3D_WEIGHTS_DIR=OUT/weights python -m gen3d run METHOD ...`` uses it;
- ``tensorboard/`` with ``--set tensorboard=true``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInput
from ..files import write_bytes, write_json
from .data import KeyedSampler, ObjectViews, scan_objects
from .recipes import Recipe, TrainConfig, get_recipe

log = logging.getLogger(__name__)


@dataclass
class TrainRun:
    """A checked training request."""

    recipe: Recipe
    cfg: TrainConfig
    preset: str
    objects: list[ObjectViews]
    dataset: torch.utils.data.Dataset
    data: Path
    out: Path
    resume: bool


def prepare(recipe: str, data: str | Path, out: str | Path, preset: str = "full",
            overrides: dict[str, Any] | None = None, resume: bool = False) -> TrainRun:
    """Check a request and build the recipe's dataset view; raises :class:`BadInput` (nothing written) on an unknown
    recipe or preset, an option out of range, an empty or wrong data folder, or an output folder holding another run
    without ``resume`` (and :class:`MissingWeights` when a model to fine-tune is not on disk)."""
    rec = get_recipe(recipe)
    cfg = rec.Config.resolve(preset, overrides)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise BadInput("option mixed_precision: fp16 needs CUDA (use bf16 or no)", {"field": "mixed_precision"})
    objects = scan_objects(data, rec.min_views(cfg))
    dataset = rec.dataset(objects, cfg)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: exists and is not a folder", {"field": "out"})
    if not resume and ((out / "checkpoints").exists() or (out / "metrics.jsonl").exists()):
        raise BadInput(f"--out {out} already holds a training run; pass --resume to continue it or choose another "
                       f"folder", {"field": "out"})
    return TrainRun(rec, cfg, preset, objects, dataset, Path(data), out, resume)


def lr_lambda(warmup: int, total: int):
    """OpenLRM's CosineWarmupScheduler as a LambdaLR factor: optimiser step ``k = e + 1`` uses ``k / warmup`` of
    the peak during warm-up, then ``(1 + cos(pi (k - warmup) / (total - warmup))) / 2``."""
    def factor(e: int) -> float:
        k = e + 1
        if k <= warmup:
            return k / warmup
        return 0.5 * (1 + math.cos(math.pi * (k - warmup) / max(total - warmup, 1)))
    return factor


class Progress:
    """The optimiser-step counter, saved in every checkpoint through ``register_for_checkpointing``."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def mixed_precision(cfg: TrainConfig) -> str | None:
    """``auto``: what ``accelerate launch`` chose, else bf16 (fp16) on CUDA, fp32 on CPU."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def latest_checkpoint(out: Path) -> Path | None:
    steps = [(int(p.name.split("_")[1]), p) for p in (out / "checkpoints").glob("step_*")
             if p.is_dir() and p.name.split("_")[1].isdigit()]
    return max(steps)[1] if steps else None


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a run that died after its last checkpoint logs them again)."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        write_bytes(path, "".join(ln + "\n" for ln in lines).encode())


def _png(path: Path, image) -> None:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def train(run: TrainRun) -> dict[str, Any]:
    """Run (or continue) a prepared training run in this process; returns a summary on the main process."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from tqdm import tqdm

    recipe, cfg, out = run.recipe, run.cfg, run.out
    # several processes without CUDA: Accelerate's MULTI_CPU (gloo) needs to be told it is on the CPU
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    acc = Accelerator(cpu=cpu, gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mixed_precision(cfg),
                      step_scheduler_with_optimizer=False, log_with="tensorboard" if cfg.tensorboard else None,
                      project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")))
    main = acc.is_main_process
    set_seed(cfg.seed)
    dataset = run.dataset
    model = recipe.model(cfg)
    optimizer = torch.optim.AdamW(recipe.param_groups(model, cfg), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, cfg.steps))
    per_step = cfg.batch_size * cfg.grad_accum * acc.num_processes  # samples per optimiser step, all processes
    sampler = KeyedSampler(len(dataset), cfg.steps * per_step, cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                                         num_workers=cfg.num_workers)
    model, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)
    progress = Progress()
    acc.register_for_checkpointing(progress)
    ema = None
    if cfg.ema_decay > 0:
        ema = AveragedModel(acc.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
        acc.register_for_checkpointing(ema)

    ckpt = latest_checkpoint(out) if run.resume else None
    if main:
        if ckpt is not None and (out / "run.json").is_file():
            before = json.loads((out / "run.json").read_text())
            changed = sorted(k for k, v in cfg.model_dump(mode="json").items() if before["options"].get(k) != v)
            if changed or before["world_size"] != acc.num_processes:
                log.warning("resuming with other options (%s) or process count: not bit for bit the run that was "
                            "interrupted", ", ".join(changed) or "world_size")
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run.json", {"recipe": recipe.name, "preset": run.preset, "data": str(run.data.resolve()),
                                      "objects": len(run.objects), "world_size": acc.num_processes,
                                      "options": cfg.model_dump(mode="json")})
    if ckpt is not None:
        acc.load_state(str(ckpt))
        log.info("resumed from %s (step %d)", ckpt, progress.step)
        if main:
            _truncate_metrics(out / "metrics.jsonl", progress.step)
    batches = acc.skip_first_batches(loader, progress.step * cfg.grad_accum) if progress.step else loader
    if cfg.tensorboard:
        acc.init_trackers("train")
    acc.wait_for_everyone()

    bar = tqdm(total=cfg.steps, initial=progress.step, disable=not main, desc=f"train {recipe.name}", unit="step",
               dynamic_ncols=True)
    terms: list[dict[str, torch.Tensor]] = []
    t_log, steps_since_log = time.perf_counter(), 0
    model.train()
    for batch in batches if progress.step < cfg.steps else []:
        with acc.accumulate(model):
            losses = model(batch)
            acc.backward(losses["loss"])
            if acc.sync_gradients and cfg.grad_clip > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
        terms.append({k: v.detach().float() for k, v in losses.items()})
        if not acc.sync_gradients:
            continue
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        progress.step += 1
        steps_since_log += 1
        if ema is not None:
            ema.update_parameters(acc.unwrap_model(model))
        step = progress.step
        evaluate = step % cfg.eval_every == 0 or step == cfg.steps
        if step % cfg.log_every == 0 or evaluate:
            names = sorted(terms[0])
            local = torch.stack([torch.stack([t[k] for k in names]) for t in terms])
            mean = acc.gather(local[None]).reshape(-1, len(names)).mean(0).tolist()
            now = time.perf_counter()
            record = {"step": step, **dict(zip(names, mean)), "lr": lr, "world_size": acc.num_processes,
                      "samples_per_s": steps_since_log * per_step / max(now - t_log, 1e-9)}
            t_log, steps_since_log = now, 0
            if evaluate:
                record.update(_evaluate(acc, recipe, ema.module if ema else acc.unwrap_model(model), dataset, cfg,
                                        out / "eval" / f"step_{step:06d}.png"))
                model.train()
            if main:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{lr:.2e}")
            if cfg.tensorboard:
                acc.log({k: v for k, v in record.items() if k != "step"}, step=step)
        terms = []
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_checkpoint(acc, out, step, cfg.keep_checkpoints)
        if step >= cfg.steps:
            break
    bar.close()

    final = ema.module if ema is not None else acc.unwrap_model(model)
    if acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP) and ema is None:
        state = acc.get_state_dict(model)  # gathered from the shards
        if main:
            final = recipe.model(cfg)
            final.load_state_dict(state)
    weights = None
    if main:
        weights = _export(recipe, final, out, cfg)
    acc.wait_for_everyone()
    acc.end_training()
    return {"steps": progress.step, "weights": weights, "out": out}


def _evaluate(acc, recipe: Recipe, module, dataset, cfg, path: Path) -> dict[str, float]:
    """The recipe's evaluation render on the main process, saved to ``path``; its metrics."""
    metrics: dict[str, float] = {}
    if acc.is_main_process:
        module.eval()
        image, metrics = recipe.evaluate(module, dataset, cfg)
        _png(path, image)
    return metrics


def _save_checkpoint(acc, out: Path, step: int, keep: int) -> None:
    root = out / "checkpoints"
    tmp, final = root / f".step_{step}.partial", root / f"step_{step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted((int(p.name.split("_")[1]), p) for p in root.glob("step_*") if p.name.split("_")[1].isdigit())
        for _, old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _export(recipe: Recipe, module, out: Path, cfg) -> Path:
    """``OUT/weights/<entry>/``: written under a temporary name, then swapped in."""
    from ..weights import TINY_MARKER

    entry = recipe.entry(cfg)
    root = out / "weights"
    tmp, final = root / f".{entry}.partial", root / entry
    shutil.rmtree(tmp, ignore_errors=True)
    recipe.export(module, tmp, cfg)
    if recipe.tiny(cfg):
        write_json(tmp / TINY_MARKER, {"name": entry, "note": f"tiny architecture trained by gen3d train "
                                                              f"{recipe.name}: a smoke-test model, not real weights"})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
