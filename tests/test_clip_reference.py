"""Zero123's reference image: CLIP pixels exactly as the published pipeline makes them, and the latent option.

The expected pixels are computed here with PIL and numpy from the processor config alone (torchvision's
``to_pil_image`` truncation, PIL bicubic of the shortest edge, centre crop, rescale, normalise), never through the
code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image


def expected_clip_pixels(image: torch.Tensor, config: dict) -> np.ndarray:
    """``[3,H,W]`` float in [0,1] -> ``[3,S,S]`` float32, from ``preprocessor_config.json`` values."""
    a = image.permute(1, 2, 0).numpy().astype(np.float32)
    u8 = (a * np.float32(255)).astype(np.uint8)                     # to_pil_image: pic.mul(255).byte()
    h, w = u8.shape[:2]
    short = config["size"]["shortest_edge"]
    new_h, new_w = (int(short * h / w), short) if w <= h else (short, int(short * w / h))
    pil = Image.fromarray(u8).resize((new_w, new_h), resample=config["resample"])
    x = np.asarray(pil)
    ch, cw = config["crop_size"]["height"], config["crop_size"]["width"]
    top, left = (new_h - ch) // 2, (new_w - cw) // 2
    x = x[top:top + ch, left:left + cw]
    x = (x.astype(np.float64) * config["rescale_factor"]).astype(np.float32)
    mean = np.asarray(config["image_mean"], np.float32)
    std = np.asarray(config["image_std"], np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def zero123_dir(tmp_path_factory):
    from gen3d.backend import weights

    root = tmp_path_factory.mktemp("clip_ref")
    weights.write_tiny("zero123-xl", root)
    return root / "zero123-xl"


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g)


@pytest.mark.parametrize("size,shape", [(32, (64, 64)), (224, (256, 256)), (224, (250, 300)), (224, (300, 250))])
def test_clip_pixels_are_the_published_pipelines(tmp_path, size, shape):
    from gen3d.backend.guidance.clip_image import clip_pixels, load_clip_processor
    from gen3d.backend.guidance.tiny import write_clip_preprocessor_config

    write_clip_preprocessor_config(tmp_path / "feature_extractor", size)
    config = json.loads((tmp_path / "feature_extractor" / "preprocessor_config.json").read_text())
    image = _image(*shape)
    got = clip_pixels(image, load_clip_processor(tmp_path, 999)).numpy()
    assert got.shape == (1, 3, size, size)
    np.testing.assert_array_equal(got[0], expected_clip_pixels(image[0], config))


def test_tiny_zero123_has_the_hub_feature_extractor_layout(zero123_dir):
    config = json.loads((zero123_dir / "feature_extractor" / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "CLIPImageProcessor" and config["resample"] == 3
    assert config["size"] == {"shortest_edge": 32} and config["crop_size"] == {"height": 32, "width": 32}
    assert config["image_mean"] == [0.48145466, 0.4578275, 0.40821073]


def test_folder_without_feature_extractor_uses_openai_clip_values(tmp_path):
    from gen3d.backend.guidance.clip_image import clip_pixels, load_clip_processor

    image = _image(48, 48, 1)
    config = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "resample": 3,
              "rescale_factor": 1 / 255, "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711]}
    got = clip_pixels(image, load_clip_processor(tmp_path, 32)).numpy()
    np.testing.assert_array_equal(got[0], expected_clip_pixels(image[0], config))


def test_zero123_reference_embedding_and_latent_options(zero123_dir):
    from gen3d.backend.guidance.priors.zero123 import Zero123Prior

    prior = Zero123Prior(zero123_dir)
    config = json.loads((zero123_dir / "feature_extractor" / "preprocessor_config.json").read_text())
    image = _image(prior.image_size, prior.image_size, 2)           # at the prior's size: no resize before CLIP
    pixels = torch.from_numpy(expected_clip_pixels(image[0], config))[None]
    with torch.no_grad():
        clip = prior.image_encoder(pixels).image_embeds
        posterior = prior.vae.encode(image * 2 - 1).latent_dist

    prior.set_reference(image, elevation=10.0)
    torch.testing.assert_close(prior.reference["clip"], clip, atol=0, rtol=0)
    torch.testing.assert_close(prior.reference["latent"], posterior.mode(), atol=0, rtol=0)

    prior.set_reference(image, elevation=10.0, latent="sample", generator=torch.Generator().manual_seed(7))
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(prior.reference["latent"], posterior.mean + posterior.std * noise)
    assert (prior.reference["latent"] - posterior.mode()).abs().max() > 1e-3
    with pytest.raises(ValueError, match="latent"):
        prior.set_reference(image, elevation=10.0, latent="mean")


def test_dreamgaussian_passes_the_latent_option_with_the_jobs_seed(zero123_dir, monkeypatch, tmp_path):
    from gen3d.backend.pipelines import JobRequest, RunContext
    from gen3d.backend.pipelines.dreamgaussian import DreamGaussianImageOptions, build_guide

    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(zero123_dir.parent))
    reference = torch.cat([_image(64, 64, 3), torch.ones(1, 1, 64, 64)], 1)
    latents = {}
    for mode in ("mode", "sample"):
        request = JobRequest(method="dreamgaussian", seed=11, options={"reference_latent": mode})
        guide = build_guide(DreamGaussianImageOptions(**request.options), request, RunContext(out_dir=tmp_path),
                            torch.Generator().manual_seed(0), reference)
        latents[mode] = guide.terms[0].prior.reference["latent"].clone()
    prior = guide.terms[0].prior
    with torch.no_grad():
        posterior = prior.vae.encode(reference[:, :3] * 2 - 1).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(latents["mode"], posterior.mode(), atol=0, rtol=0)
    torch.testing.assert_close(latents["sample"], posterior.mean + posterior.std * noise)
