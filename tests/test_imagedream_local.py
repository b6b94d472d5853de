"""ImageDream's ``local`` checkpoint (issue 21): an original LDM checkpoint (``model.diffusion_model.*`` beside
``vae_model.*`` and ``clip_model.*``, as bytedance publishes it) converted onto the ``imagedream`` folder, loaded by
the prior and run by the method with ``--set ip_mode=local``; wrong files are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gen3d.backend.__main__ import main


@pytest.fixture(scope="module")
def original_checkpoint(tiny_weights, tmp_path_factory):
    """The tiny ImageDream UNet perturbed (so it differs from the pixel folder's) and saved as an original LDM
    checkpoint; returns ``(path, the UNet tensors it holds)``."""
    unet = load_file(next((tiny_weights / "imagedream" / "unet").glob("*.safetensors")))
    g = torch.Generator().manual_seed(0)
    unet = {k: v.float() + 0.01 * torch.randn(v.shape, generator=g) for k, v in unet.items()}
    state = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    state["vae_model.encoder.conv_in.weight"] = torch.zeros(2, 3, 3, 3)  # the other parts the file carries
    state["clip_model.model.positional_embedding"] = torch.zeros(4, 8)
    path = tmp_path_factory.mktemp("imagedream_original") / "sd-v2.1-base-4view-ipmv-local.pt"
    torch.save({"state_dict": state, "global_step": 1}, path)
    return path, unet


def test_convert_takes_the_unet_from_the_checkpoint_and_the_rest_from_the_pixel_folder(
        original_checkpoint, tiny_weights, tmp_path, capsys):
    from gen3d.backend.guidance.priors.mvdream import ImageDreamPrior

    path, unet = original_checkpoint
    out = tmp_path / "imagedream-local"
    assert main(["weights", "convert", "imagedream-local", str(path), "--base", str(tiny_weights / "imagedream"),
                 "--dir", str(out)]) == 0, capsys.readouterr().err
    prior = ImageDreamPrior(out, ip_mode="local")
    for name, value in prior.unet.state_dict().items():
        assert torch.equal(value.float(), unet[name].to(value.dtype).float()), name
    base = ImageDreamPrior(tiny_weights / "imagedream")
    for part in ("vae", "image_encoder"):
        for (name, a), b in zip(getattr(prior, part).state_dict().items(), getattr(base, part).state_dict().values()):
            assert torch.equal(a, b), f"{part}.{name}"
    assert not list(tmp_path.glob(".*partial*"))


def test_the_method_runs_the_local_folder_and_names_the_converter_when_it_is_missing(
        original_checkpoint, tiny_weights, tmp_path, capsys):
    from gen3d.backend.guidance.priors.imagedream_local import convert_local

    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[24:72, 30:66] = (210, 120, 40, 255)
    Image.fromarray(rgba).save(tmp_path / "object.png")
    run = ["run", "imagedream", "--image", str(tmp_path / "object.png"), "--preset", "fast", "--weights-dir",
           str(tiny_weights), "--set", "stop_after=views", "--set", "views_steps=2", "--set", "ip_mode=local"]

    assert main(run + ["--out", str(tmp_path / "missing")]) == 3
    err = capsys.readouterr().err.strip()
    assert "imagedream-local" in err and "weights convert imagedream-local" in err and "\n" not in err
    assert not (tmp_path / "missing").exists()

    local = convert_local(original_checkpoint[0], tiny_weights / "imagedream", tmp_path / "imagedream-local")
    assert main(run + ["--out", str(tmp_path / "out"), "--set", f"weights_path={local}"]) == 0
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["weights"][0]["name"] == "imagedream-local" and "views.png" in meta["artifacts"]


def test_a_checkpoint_that_is_not_imagedreams_is_one_line(original_checkpoint, tiny_weights, tmp_path, capsys):
    path, unet = original_checkpoint
    state = {f"model.diffusion_model.{k}": v for k, v in unet.items() if "to_k_ip" not in k}  # MVDream-like
    wrong = tmp_path / "mvdream.pt"
    torch.save({"state_dict": state}, wrong)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    for bad, message in ((wrong, "missing (first: "), (tmp_path / "garbage.pt", "cannot read garbage.pt")):
        code = main(["weights", "convert", "imagedream-local", str(bad), "--base", str(tiny_weights / "imagedream"),
                     "--dir", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, err
        assert not (tmp_path / "out").exists()
