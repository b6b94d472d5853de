"""nerfstudio transforms.json folders: round trips, the OpenGL convention on disk, and every kind of bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gen3d.backend.errors import BadInput
from gen3d.backend.geometry.cameras import Cameras, orbit_cameras
from gen3d.backend.geometry.transforms import load_transforms, save_transforms

W, H = 10, 6


def quantized_images(n: int, channels: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, H, W, channels), generator=g).float() / 255


def sample_cameras(same_intrinsics: bool = True) -> Cameras:
    cams = orbit_cameras([10, -20, 45], [0, 100, -150], [2.0, 2.5, 3.0], 40.0, W, H, target=(0.1, 0.2, 0.3))
    if not same_intrinsics:
        cams.K[1, 0, 0] *= 1.1
        cams.K[2, 0, 2] += 0.75
    return cams


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.mark.parametrize("same_intrinsics", [True, False])
@pytest.mark.parametrize("separate_masks", [False, True])
def test_round_trip(tmp_path, same_intrinsics, separate_masks):
    cams, images = sample_cameras(same_intrinsics), quantized_images(3)
    save_transforms(tmp_path, cams, images, separate_masks=separate_masks)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert ("fl_x" in meta) == same_intrinsics and ("fl_x" in meta["frames"][1]) != same_intrinsics
    assert ("mask_path" in meta["frames"][0]) == separate_masks
    back, back_images = load_transforms(tmp_path)
    assert (back.width, back.height) == (W, H) and back_images.shape == (3, H, W, 4)
    torch.testing.assert_close(back.K, cams.K)
    torch.testing.assert_close(back.c2w, cams.c2w, atol=1e-6, rtol=0)
    assert torch.equal(back_images, images)


def test_transform_matrix_on_disk_is_opengl(tmp_path):
    # front camera: on -Y looking at +Y, Z up => OpenGL axes x = +X, y (up) = +Z, z (backwards) = -Y
    cam = orbit_cameras(0.0, 0.0, 3.0, 50.0, W, H)
    save_transforms(tmp_path, cam, quantized_images(1))
    m = np.array(json.loads((tmp_path / "transforms.json").read_text())["frames"][0]["transform_matrix"])
    expected = np.array([[1, 0, 0, 0], [0, 0, -1, -3.0], [0, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(m, expected, atol=1e-6)


def test_rgb_without_mask_is_opaque_and_nerf_synthetic_style_keys(tmp_path):
    # instant-ngp / NeRF-synthetic style: camera_angle_x, no w/h/cx/cy, file_path without extension
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3))
    write_png(tmp_path / "train" / "r_0.png", rgb)
    c2w = np.eye(4)
    c2w[:3, 3] = [1, 2, 3]
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"camera_angle_x": 0.8, "frames": [{"file_path": "./train/r_0", "transform_matrix": c2w.tolist()}]}))
    cams, images = load_transforms(tmp_path / "transforms.json")
    f = 0.5 * W / math.tan(0.4)
    torch.testing.assert_close(cams.K[0], torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]))
    torch.testing.assert_close(cams.c2w[0], torch.tensor(np.diag([1.0, -1, -1, 1]) + np.pad(c2w[:3, 3:], ((0, 1), (3, 0))),
                                                         dtype=torch.float32))
    np.testing.assert_array_equal(images[0, ..., :3].numpy() * 255, rgb)
    assert (images[..., 3] == 1).all()


# --- bad input ---------------------------------------------------------------------------------------------------
def good_folder(tmp_path) -> dict:
    save_transforms(tmp_path, sample_cameras(), quantized_images(3), separate_masks=True)
    return json.loads((tmp_path / "transforms.json").read_text())


def scaled(m, s=2.0):
    m = np.array(m)
    m[:3, :3] *= s
    return m.tolist()


def mirrored(m):
    m = np.array(m)
    m[:3, 0] *= -1
    return m.tolist()


def edit_frame(key, fn):
    def edit(meta, root):
        meta["frames"][1][key] = fn(meta["frames"][1].get(key))
    return edit


def delete(key):
    def edit(meta, root):
        del meta["frames"][1][key]
    return edit


def resize_image(meta, root):
    write_png(root / meta["frames"][1]["file_path"], np.zeros((H + 1, W, 3)))
    write_png(root / meta["frames"][1]["mask_path"], np.zeros((H + 1, W)))


def resize_mask(meta, root):
    write_png(root / meta["frames"][1]["mask_path"], np.zeros((H, W + 2)))


def remove_file(key):
    def edit(meta, root):
        (root / meta["frames"][1][key]).unlink()
    return edit


def drop_focal(meta, root):
    for key in ("fl_x", "fl_y"):
        del meta[key]


def wrong_width(meta, root):
    meta["frames"][1]["w"] = W + 5


BAD = {
    "missing file_path": (delete("file_path"), "missing key(s) file_path"),
    "missing transform_matrix": (delete("transform_matrix"), "missing key(s) transform_matrix"),
    "non-finite matrix": (edit_frame("transform_matrix", lambda m: [[float("nan")] + r[1:] for r in m]), "non-finite"),
    "scaled matrix": (edit_frame("transform_matrix", scaled), "not rigid"),
    "mirrored matrix": (edit_frame("transform_matrix", mirrored), "not rigid"),
    "wrong matrix shape": (edit_frame("transform_matrix", lambda m: m[:2]), "must be 4x4"),
    "text matrix": (edit_frame("transform_matrix", lambda m: "identity"), "transform_matrix"),
    "missing image": (remove_file("file_path"), "image file not found"),
    "missing mask": (remove_file("mask_path"), "mask_path 'masks/frame_00001.png': image file not found"),
    "image of another size": (resize_image, "all images must share one size"),
    "mask of another size": (resize_mask, "mask frame_00001.png is 12 x 6"),
    "no focal length": (drop_focal, "no focal length"),
    "json w disagrees with image": (wrong_width, "w x h = 15.0 x"),
    "non-numeric fl_x": (edit_frame("fl_x", lambda _: "big"), "fl_x is not a number"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_frame_and_problem(tmp_path, case):
    edit, problem = BAD[case]
    meta = good_folder(tmp_path)
    edit(meta, tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput) as info:
        load_transforms(tmp_path)
    message = str(info.value)
    frame = 0 if case == "no focal length" else 1  # a missing top-level focal length hits every frame
    assert message.startswith(f"{tmp_path / 'transforms.json'}, frame {frame}: "), message
    assert problem in message, message
    assert info.value.detail["problems"][0]["frame"] == frame


def test_all_problems_are_listed_in_one_error(tmp_path):
    meta = good_folder(tmp_path)
    meta["frames"][0]["transform_matrix"][0][0] = float("inf")
    del meta["frames"][2]["file_path"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput, match=r"frame 0: transform_matrix has non-finite values \(and 1 more problems\)") as info:
        load_transforms(tmp_path)
    assert [p["frame"] for p in info.value.detail["problems"]] == [0, 2]


def test_folder_level_problems(tmp_path):
    with pytest.raises(BadInput, match="no transforms.json found"):
        load_transforms(tmp_path)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(BadInput, match="transforms.json: not valid JSON"):
        load_transforms(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 10}))
    with pytest.raises(BadInput, match="transforms.json: missing or empty 'frames' list"):
        load_transforms(tmp_path)


def test_writing_leaves_no_temporary_files(tmp_path):
    save_transforms(tmp_path, sample_cameras(), quantized_images(3))
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["images/frame_00000.png", "images/frame_00001.png", "images/frame_00002.png", "transforms.json"]
