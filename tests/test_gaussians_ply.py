"""3DGS PLY: round trip, and the exact header layout other splat tools read (Inria ``save_ply`` order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from gen3d.backend.errors import BadInput
from gen3d.backend.representations.gaussians import SH_C0, Gaussians, load_ply, save_ply


def random_gaussians(n: int, degree: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g),
                     torch.randn(n, generator=g), torch.randn(n, k, 3, generator=g))


def read_header_and_table(path):
    """An independent minimal reader: header lines and the float32 table."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    names = [line.split()[2] for line in header if line.startswith("property")]
    table = np.frombuffer(raw[end:], dtype="<f4").reshape(-1, len(names))
    return header, names, table


# written out by hand from the Inria gaussian-splatting construct_list_of_attributes
DEGREE0 = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
           "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip(tmp_path, degree):
    g = random_gaussians(57, degree)
    back = load_ply(save_ply(g, tmp_path / "g.ply"))
    assert back.sh_degree == degree
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert torch.equal(getattr(back, name), getattr(g, name)), name


@pytest.mark.parametrize("degree", [0, 3])
def test_header_layout_matches_3dgs(tmp_path, degree):
    g = random_gaussians(5, degree)
    header, names, table = read_header_and_table(save_ply(g, tmp_path / "g.ply"))
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 5"]
    assert all(line.startswith("property float ") for line in header[3:-1]) and header[-1] == "end_header"
    rest = [f"f_rest_{i}" for i in range(45)] if degree == 3 else []
    assert names == DEGREE0[:9] + rest + DEGREE0[9:]
    assert len(names) == (62 if degree == 3 else 17)
    np.testing.assert_array_equal(table[:, 0:3], g.means.numpy())
    np.testing.assert_array_equal(table[:, 3:6], 0)
    np.testing.assert_array_equal(table[:, names.index("opacity")], g.opacity_logits.numpy())
    np.testing.assert_array_equal(table[:, -4:], g.quats.numpy())  # w x y z as stored
    np.testing.assert_array_equal(table[:, -7:-4], g.log_scales.numpy())


@pytest.mark.parametrize("degree", [0, 2])
def test_two_sided_back_colours_follow_the_standard_columns(tmp_path, degree):
    g = random_gaussians(7, degree)
    g.sh_back = torch.randn(g.sh.shape, generator=torch.Generator().manual_seed(3))
    path = save_ply(g, tmp_path / "g.ply")
    _, names, table = read_header_and_table(path)
    rest = [f"f_rest_{i}" for i in range(24)] if degree == 2 else []
    back_rest = [f"back_rest_{i}" for i in range(24)] if degree == 2 else []
    assert names == DEGREE0[:9] + rest + DEGREE0[9:] + ["back_dc_0", "back_dc_1", "back_dc_2"] + back_rest
    np.testing.assert_array_equal(table[:, names.index("back_dc_0"):names.index("back_dc_2") + 1], g.sh_back[:, 0])
    back = load_ply(path)
    assert torch.equal(back.sh, g.sh) and torch.equal(back.sh_back, g.sh_back)
    np.testing.assert_allclose(trimesh.load(path).vertices, g.means.numpy(), atol=1e-6)   # other readers


def test_f_rest_is_channel_major(tmp_path):
    g = random_gaussians(3, 3)
    g.sh[:, 1:] = 0
    g.sh[:, 1, 0] = 1.0   # first higher coefficient of R
    g.sh[:, 1, 1] = 2.0   # ... of G
    g.sh[:, 15, 2] = 3.0  # last coefficient of B
    _, names, table = read_header_and_table(save_ply(g, tmp_path / "g.ply"))
    rest = table[:, names.index("f_rest_0"):names.index("f_rest_44") + 1]
    expected = np.zeros(45, np.float32)
    expected[0], expected[15], expected[44] = 1.0, 2.0, 3.0
    np.testing.assert_array_equal(rest, np.broadcast_to(expected, rest.shape))


def test_other_ply_reader_sees_positions(tmp_path):
    g = random_gaussians(11, 3)
    cloud = trimesh.load(save_ply(g, tmp_path / "g.ply"))
    np.testing.assert_allclose(cloud.vertices, g.means.numpy(), atol=1e-6)


def test_activations():
    g = Gaussians.from_activated(torch.zeros(2, 3), torch.tensor([[0.1, 0.2, 0.3], [1, 1, 1]]),
                                 torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 3]]), torch.tensor([0.25, 0.9]),
                                 torch.tensor([[0.2, 0.5, 0.8], [1, 0, 0]]), sh_degree=2)
    torch.testing.assert_close(g.scales, torch.tensor([[0.1, 0.2, 0.3], [1, 1, 1]]))
    torch.testing.assert_close(g.opacities, torch.tensor([0.25, 0.9]))
    torch.testing.assert_close(g.rotations, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1]]))
    torch.testing.assert_close(g.colors, torch.tensor([[0.2, 0.5, 0.8], [1, 0, 0]]))
    torch.testing.assert_close(g.sh[:, 0], (g.colors - 0.5) / 0.28209479177387814)
    assert g.sh.shape == (2, 9, 3) and SH_C0 == pytest.approx(0.5 / np.sqrt(np.pi))


def test_bad_files(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_ply(tmp_path / "missing.ply")
    (tmp_path / "text.ply").write_text("hello\n")
    with pytest.raises(BadInput, match="not a PLY"):
        load_ply(tmp_path / "text.ply")
    mesh_ply = tmp_path / "mesh.ply"
    trimesh.creation.box().export(mesh_ply)
    with pytest.raises(BadInput, match="mesh.ply.*not a 3DGS PLY"):
        load_ply(mesh_ply)
    path = save_ply(random_gaussians(10, 0), tmp_path / "cut.ply")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(BadInput, match="truncated"):
        load_ply(path)
