"""``python -m gen3d train lrm`` on a few Spot renders (gen3d.kernels.mesh, like the demo): the loss falls and
held-out views improve over the untrained network; 2 processes (gloo) equal 1 process with the doubled batch, and
gradient accumulation equals the doubled batch; ``--resume`` from a checkpoint equals the uninterrupted run bit for
bit; the exported weights load through the LRM loader and ``run lrm`` uses them; bad input fails once, exit 2, with
nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gen3d.backend.__main__ import main

REPO = Path(__file__).resolve().parents[1]

TINY = ["--preset", "tiny", "--set", "eval_size=24", "--set", "eval_views=2"]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator (Accelerate keeps process-wide singletons)."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def spot_data(tmp_path_factory):
    """One object: Spot rendered from 8 cameras (two rings) at 64 x 64 into a transforms.json folder."""
    from gen3d.backend.commands.demo import make_spot_views

    root = tmp_path_factory.mktemp("train_data")
    make_spot_views(root / "spot", resolution=64, per_ring=4)
    return root


def train(data, out, *extra):
    return main(["train", "lrm", "--data", str(data), "--out", str(out), *TINY, *extra])


def weights(out):
    return load_file(str(out / "weights" / "openlrm-small" / "model.safetensors"))


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_its_weights_run_through_the_lrm_method(spot_data, tmp_path, monkeypatch):
    from gen3d.backend.models.lrm import load_lrm
    from gen3d.backend.training import get_recipe, prepare

    out = tmp_path / "run"
    assert train(spot_data, out) == 0
    lines = metrics(out)
    assert [m["step"] for m in lines] == list(range(1, 41))
    assert {"loss", "pixel", "mask", "tv", "lr", "world_size", "samples_per_s"} <= set(lines[0])
    assert lines[0]["world_size"] == 1 and all(m["samples_per_s"] > 0 for m in lines)
    first, last = (sum(m["loss"] for m in part) / 5 for part in (lines[:5], lines[-5:]))
    assert last < 0.9 * first, (first, last)
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["step_000020.png", "step_000040.png"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_20", "step_40"]

    # held-out views of the training object, against the same (seeded) network untrained
    run = prepare("lrm", spot_data, tmp_path / "unused", "tiny", {"eval_size": 24, "eval_views": 2})
    recipe = get_recipe("lrm")
    untrained = recipe.evaluate(recipe.model(run.cfg).eval(), run.dataset, run.cfg)[1]
    assert lines[-1]["eval_psnr"] > untrained["eval_psnr"] + 1.0, (untrained, lines[-1])

    # the exported folder is a published OpenLRM layout with the tiny marker; the method runs on it
    folder = out / "weights" / "openlrm-small"
    assert sorted(p.name for p in folder.iterdir()) == ["GEN3D_TINY.json", "config.json", "model.safetensors"]
    lrm = load_lrm(folder)
    with torch.no_grad():  # a tiny model's density is weak: mesh it half-way between its extremes
        grid = lrm.field(lrm.forward_planes(torch.rand(1, 3, 84, 84))[0]).density_grid(24)
    level = float(grid.min() + grid.max()) / 2
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(out / "weights"))
    image = spot_data / "spot" / "images" / "frame_00001.png"
    assert main(["run", "lrm", "--image", str(image), "--out", str(tmp_path / "lrm"), "--preset", "fast",
                 "--set", "model=openlrm-small", "--set", f"mesh_level={level}", "--set", "mesh_resolution=32",
                 "--set", "texture_size=64", "--set", "preview_views=1", "--set", "preview_size=16"]) == 0
    meta = json.loads((tmp_path / "lrm" / "meta.json").read_text())
    assert meta["weights"]["path"] == str(folder) and meta["weights"]["tiny"] is True
    assert (tmp_path / "lrm" / "mesh.glb").stat().st_size > 0


@pytest.mark.parametrize("entry", ["openlrm-base", "triposr"])
def test_export_is_the_trained_network_in_the_published_layout(entry, spot_data, tmp_path):
    """openlrm-base packs cross-attention q/k/v (in_proj_weight), TripoSR is a pickled model.ckpt + config.yaml."""
    from gen3d.backend.models.lrm import load_lrm

    out = tmp_path / entry
    assert train(spot_data, out, "--set", f"model={entry}", "--set", "steps=2", "--set", "checkpoint_every=2") == 0
    trained = load_file(str(out / "checkpoints" / "step_2" / "model.safetensors"))  # the trainer's own state
    loaded = load_lrm(out / "weights" / entry).state_dict()
    assert {f"lrm.{k}" for k in loaded} == set(trained)
    assert all(torch.equal(v, trained[f"lrm.{k}"]) for k, v in loaded.items())
    fresh = get_fresh(entry, spot_data, tmp_path)
    assert not all(torch.equal(v, fresh[k]) for k, v in loaded.items())  # it did train


def get_fresh(entry, data, tmp_path):
    from gen3d.backend.training import get_recipe, prepare

    run = prepare("lrm", data, tmp_path / "unused", "tiny", {"model": entry})
    return get_recipe("lrm").model(run.cfg).lrm.state_dict()


def test_two_processes_equal_one_with_the_doubled_batch(spot_data, tmp_path):
    steps = ["--set", "steps=4", "--set", "checkpoint_every=4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gen3d", "train", "lrm", "--data", str(spot_data), "--out",
                           str(tmp_path / "two"), *TINY, *steps, "--set", "batch_size=1", "--num-processes", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert train(spot_data, tmp_path / "one", *steps, "--set", "batch_size=2") == 0
    assert train(spot_data, tmp_path / "accum", *steps, "--set", "batch_size=1", "--set", "grad_accum=2") == 0
    assert [m["world_size"] for m in metrics(tmp_path / "two")] == [2] * 4
    one, two, accum = (weights(tmp_path / name) for name in ("one", "two", "accum"))
    for key in one:
        # DDP's all-reduced mean equals accumulating two micro-batches up to float rounding
        torch.testing.assert_close(two[key], accum[key], rtol=0, atol=1e-6, msg=key)
        # a batch of 2 in one forward rounds differently from two of 1; 4 Adam steps move weights by up to ~1e-2
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-4, msg=key)
    for other in ("two", "accum"):
        losses = [m["loss"] for m in metrics(tmp_path / other)]
        assert losses == pytest.approx([m["loss"] for m in metrics(tmp_path / "one")], rel=1e-5)


def test_resume_from_a_checkpoint_continues_bit_for_bit(spot_data, tmp_path):
    opts = ["--set", "steps=6", "--set", "checkpoint_every=3", "--set", "keep_checkpoints=5", "--set",
            "ema_decay=0.5"]
    assert train(spot_data, tmp_path / "whole", *opts) == 0
    # the same run interrupted after step 4: the step_3 checkpoint, metrics up to step 4, no weights yet
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    shutil.rmtree(cut / "checkpoints" / "step_6")
    shutil.rmtree(cut / "weights")
    (cut / "metrics.jsonl").write_text("".join(line + "\n" for line in
                                               (cut / "metrics.jsonl").read_text().splitlines()[:4]))
    assert train(spot_data, cut, *opts) == 2  # an existing run is not overwritten without --resume
    assert train(spot_data, cut, *opts, "--resume") == 0
    whole, resumed = weights(tmp_path / "whole"), weights(cut)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert metrics(cut) == [{**m, "samples_per_s": r["samples_per_s"]}
                            for m, r in zip(metrics(tmp_path / "whole"), metrics(cut))]
    assert [m["step"] for m in metrics(cut)] == list(range(1, 7))


@pytest.mark.parametrize("case", ["empty data", "data without objects", "data is a file", "unknown recipe",
                                  "steps out of range", "region larger than renders", "unknown option",
                                  "unknown preset", "too few views"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, spot_data, tmp_path, capsys):
    data, recipe, extra = spot_data, "lrm", []
    if case == "empty data":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "data without objects":
        data = tmp_path / "wrong"
        (data / "a").mkdir(parents=True)
        (data / "a" / "image.png").write_bytes(b"")
    elif case == "data is a file":
        data = spot_data / "spot" / "transforms.json"
    elif case == "unknown recipe":
        recipe = "nerf-of-everything"
    elif case == "steps out of range":
        extra = ["--set", "steps=0"]
    elif case == "region larger than renders":
        extra = ["--set", "render_region=30"]
    elif case == "unknown option":
        extra = ["--set", "learning_rate=1"]
    elif case == "unknown preset":
        extra = ["--preset", "huge"]
    elif case == "too few views":
        extra = ["--set", "side_views=8"]
    out = tmp_path / "out"
    code = main(["train", recipe, "--data", str(data), "--out", str(out), *TINY, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()


def test_data_folder_forms(spot_data, tmp_path):
    """Object folders at any depth, a manifest.jsonl as ``dataset multiview`` writes it (``path``, status "ok" only;
    ``id``/``model_id`` also name a folder), or one object folder itself."""
    from gen3d.backend.errors import BadInput
    from gen3d.backend.training.data import object_folders, scan_objects

    assert object_folders(spot_data) == [spot_data / "spot"]
    assert object_folders(spot_data / "spot") == [spot_data / "spot"]
    root = tmp_path / "data"
    shutil.copytree(spot_data / "spot", root / "animals" / "cow")
    shutil.copytree(spot_data / "spot", root / "calf")
    assert object_folders(root) == [root / "animals" / "cow", root / "calf"]
    lines = [{"model_id": "cow", "class": "animals", "status": "ok", "path": "animals/cow", "views": 8},
             {"model_id": "broken", "class": "animals", "status": "failed", "error": "bad mesh"},
             {"model_id": "calf", "status": "ok"}, {"id": "calf", "status": "ok"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert [o.name for o in scan_objects(root, 3)] == ["animals/cow", "calf"]
    (root / "manifest.jsonl").write_text('{"views": 8, "status": "ok"}\n')
    with pytest.raises(BadInput, match=r"manifest.jsonl, line 1: no 'path' or 'id'"):
        object_folders(root)


def test_views_are_moved_into_the_lrm_input_frame(spot_data):
    """The similarity puts the input camera where the LRM assumes it (OpenLRM's hard-coded canonical camera) and
    keeps every view's image of the object: Spot's vertices, moved the same way, project to the same pixels."""
    from gen3d.backend.commands.demo import spot_mesh
    from gen3d.backend.geometry.cameras import Cameras
    from gen3d.backend.geometry.transforms import scan_transforms
    from gen3d.backend.models.lrm import LRM
    from gen3d.backend.models.lrm.config import from_openlrm_config
    from gen3d.backend.models.lrm.tiny import TINY_OPENLRM
    from gen3d.backend.training.recipes.lrm import axes_pivot, normalise_cameras, source_camera

    cams = scan_transforms(spot_data / "spot").cameras
    verts = spot_mesh().vertices
    pivot = axes_pivot(cams.c2w)
    torch.testing.assert_close(pivot, (verts.min(0).values + verts.max(0).values) / 2, atol=1e-5, rtol=0)
    lrm = LRM(from_openlrm_config(TINY_OPENLRM))
    expected = lrm.source_camera(1)[0]  # OpenLRM's canonical source camera, written out in models/lrm/model.py
    for src in (0, 5):
        moved = normalise_cameras(cams.c2w, src, pivot, 2.0)
        torch.testing.assert_close(source_camera(cams.K[src], cams.width, 2.0)[:12], expected[:12], atol=1e-6,
                                   rtol=0)
        R = moved[src, :3, :3] @ cams.c2w[src, :3, :3].T
        scale = 2.0 / float((pivot - cams.c2w[src, :3, 3]) @ cams.c2w[src, :3, 2])
        moved_verts = scale * (verts - cams.c2w[src, :3, 3]) @ R.T + moved[src, :3, 3]
        uv, _ = cams.project(verts)
        uv_moved, _ = Cameras(cams.K, moved, cams.width, cams.height).project(moved_verts)
        torch.testing.assert_close(uv_moved, uv, atol=1e-3, rtol=0)
        assert moved_verts.norm(dim=1).max() < lrm.cfg.radius  # inside the triplane box
