"""The weights registry: entries, resolution order, status (present/missing/tiny), errors, and the CLI."""

from __future__ import annotations

import pytest

from gen3d.backend import weights
from gen3d.backend.__main__ import main
from gen3d.backend.errors import BadInput, MissingWeights


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No weights folder and an empty Hugging Face cache."""
    monkeypatch.delenv("GEN3D_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


def test_every_entry_is_complete():
    required = {"sd21-base", "sd15", "zero123-xl", "stable-zero123", "mvdream", "controlnet-canny-sd15",
                "controlnet-canny-sdxl", "openlrm-small", "openlrm-base", "openlrm-large", "triposr"}
    assert required <= set(weights.ENTRIES)
    for e in weights.ENTRIES.values():
        assert e.revision and e.license and e.size_gb > 0 and e.methods, e.name
        if e.repo:
            assert "/" in e.repo and e.download_command == f"python -m gen3d weights download {e.name}", e.name
        else:  # trained (agp) or converted (imagedream-local) by the user: its command does it
            verb = e.extra.get("verb", "train")
            assert e.download_command.startswith(f"python -m gen3d {'weights ' * (verb == 'convert')}{verb} "
                                                 f"{e.name} "), e.name
        if e.tiny_factory:
            assert callable(weights.load_factory(e)), e.name
    assert weights.get_entry("stable-zero123").restrictive and weights.get_entry("openlrm-base").restrictive
    assert not weights.get_entry("sd21-base").restrictive


def test_tiny_set_is_small_and_reported_as_tiny(tiny_weights, monkeypatch):
    assert weights.folder_size(tiny_weights) < 64e6  # 51 MB for the 19 tiny entries of this checkout
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tiny_weights))
    with_factory = [n for n, e in weights.ENTRIES.items() if e.tiny_factory]
    assert {"sd21-base", "sd15", "zero123-xl", "zero123-105000", "stable-zero123", "mvdream"} <= set(with_factory)
    for name in with_factory:
        assert weights.status(name) == "tiny", name
        info = weights.describe(name)
        assert info["tiny"] and info["status"] == "tiny" and info["path"] == str(tiny_weights / name)
        assert weights.verify(name) == [], name
    assert weights.uses_tiny(["sd21-base"]) and not weights.uses_tiny([])
    assert (tiny_weights / "zero123-xl" / "clip_camera_projection").is_dir()
    assert (tiny_weights / "zero123-105000" / "cc_projection").is_dir()
    assert (tiny_weights / "sd21-base" / "model_index.json").is_file()


def test_missing_weights_error_names_the_command(empty_caches):
    assert weights.status("sd15") == "missing"
    with pytest.raises(MissingWeights) as e:
        weights.resolve("sd15")
    assert "python -m gen3d weights download sd15" in e.value.message
    assert e.value.http_status == 503 and e.value.detail["repo"] == weights.get_entry("sd15").repo


def test_cli_reports_missing_weights_with_the_command(empty_caches, capsys):
    assert main(["weights", "path", "mvdream"]) == MissingWeights.exit_code
    assert "python -m gen3d weights download mvdream" in capsys.readouterr().err


def test_resolution_order_explicit_then_weights_dir_then_hf_cache(empty_caches, monkeypatch):
    root = empty_caches
    entry = weights.get_entry("sd21-base")
    snapshot = root / "hf-cache" / ("models--" + entry.repo.replace("/", "--")) / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    assert weights.resolve("sd21-base") == snapshot and weights.status("sd21-base") == "present"

    folder = root / "weights" / "sd21-base"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(root / "weights"))
    assert weights.resolve("sd21-base") == folder

    explicit = root / "elsewhere"
    explicit.mkdir()
    assert weights.resolve("sd21-base", explicit) == explicit
    with pytest.raises(BadInput, match="does not exist"):
        weights.resolve("sd21-base", root / "nope")


def test_restrictive_licence_is_shown_and_must_be_accepted(empty_caches):
    with pytest.raises(BadInput) as e:
        weights.download("stable-zero123")  # refused before any network access
    assert "Non-Commercial" in e.value.message and "--accept-license" in e.value.message


def test_unknown_entry():
    with pytest.raises(Exception, match="unknown weights 'nope'"):
        weights.get_entry("nope")


def test_cli_list_and_tiny_subset(tmp_path, monkeypatch, capsys):
    assert main(["weights", "tiny", "--dir", str(tmp_path), "controlnet-canny-sd15"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tmp_path))
    assert main(["weights", "list"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("controlnet-canny-sd15"))
    assert "tiny" in line and "smoke-test weights" in line
    assert main(["weights", "path", "controlnet-canny-sd15"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "controlnet-canny-sd15")
    assert not list(tmp_path.glob(".*.partial"))


def test_list_shows_what_runs_with_honest_sizes_and_verify_marks_tiny(tmp_path, monkeypatch, capsys):
    """``weights list`` lists the entries of registered methods (and of ``dataset generate``), not those of methods
    still to come; a smoke-test entry shows its size on disk, and ``verify`` says it is one."""
    from gen3d.backend.pipelines import names

    assert main(["weights", "tiny", "--dir", str(tmp_path), "triposr"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tmp_path))
    assert main(["weights", "list", "--json"]) == 0
    import json

    listed = {r["name"] for r in json.loads(capsys.readouterr().out)}
    runs = set(names()) | {"controlnet-dataset"}
    assert listed == {n for n, e in weights.ENTRIES.items() if runs & set(e.methods)}
    assert main(["weights", "list", "--all", "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} == set(weights.ENTRIES)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(l for l in out if l.startswith("triposr"))
    disk_mb = weights.folder_size(tmp_path / "triposr") / 1e6
    assert f"{disk_mb:.1f} MB on disk" in line and "smoke-test" in line and "1.68 GB" in line
    users = [l.split("used by: ")[1].split(", ") for l in out if "used by: " in l]
    assert set(sum(users, [])) <= runs
    assert main(["weights", "verify", "triposr"]) == 0
    assert "ok (smoke-test weights" in capsys.readouterr().out
