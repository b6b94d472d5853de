"""In-process checks of the service's parts: the SQLite job store and its restart rules, upload safety (zip
extraction, decompression bombs), the loopback/token rule of ``serve``. The real server is tested in
test_api_service.py and test_api_restart.py."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from gen3d.backend.api import uploads
from gen3d.backend.api.settings import Settings
from gen3d.backend.api.store import JobStore
from gen3d.backend.commands import serve
from gen3d.backend.commands.serve import check_host
from gen3d.backend.errors import BadInput, Conflict, NotFound, TooLarge
from support import files as F


def _settings(tmp_path, **kw) -> Settings:
    return Settings(data_dir=tmp_path, **kw)


# --- store ---------------------------------------------------------------------------------------------------
def test_store_restart_rules_and_order(tmp_path):
    s = _settings(tmp_path)
    store = JobStore.open(s.data_dir, s.db_path)
    heard = []
    store.listen(lambda kind, job: heard.append((kind, job["id"], job["state"])))
    ids = [store.create(JobStore.new_id(), "sleepy", {"i": i})["id"] for i in range(5)]
    assert store.claim_next()["id"] == ids[0]
    store.update(ids[0], state="succeeded", artifacts=[{"name": "a.txt", "size": 1}])
    assert store.claim_next()["id"] == ids[1]  # left running: a restart interrupts it
    store.update(ids[2], state="cancelled")
    with pytest.raises(Conflict):
        store.delete(ids[1])
    with pytest.raises(Conflict):
        store.update(ids[0], expect=("running",), cancel_requested=True)
    store.close()
    assert ("state", ids[2], "cancelled") in heard

    store = JobStore.open(s.data_dir, s.db_path)
    jobs = {j["id"]: j for j in store.list()}
    assert [j["id"] for j in store.list()] == ids  # submission order survives
    assert jobs[ids[0]]["state"] == "succeeded" and jobs[ids[0]]["artifacts"][0]["name"] == "a.txt"
    assert jobs[ids[1]]["state"] == "failed" and jobs[ids[1]]["message"] == "interrupted by restart"
    assert jobs[ids[1]]["error"]["code"] == "interrupted"
    assert jobs[ids[2]]["state"] == "cancelled"
    assert [jobs[i]["state"] for i in ids[3:]] == ["queued", "queued"]
    assert store.claim_next()["id"] == ids[3]
    store.delete(ids[4])  # a queued job may be deleted
    with pytest.raises(NotFound):
        store.get(ids[4])
    store.close()


# --- uploads -------------------------------------------------------------------------------------------------
def test_views_zip_extracts_into_its_folder(tmp_path):
    folder = uploads.extract_views(io.BytesIO(F.good_views(3)), tmp_path, _settings(tmp_path))
    assert folder == tmp_path / "views" / "scene"
    assert json.loads((folder / "transforms.json").read_text()) == F.transforms(3)
    assert (folder / "images" / "002.png").read_bytes() == F.png_bytes(8, 8, 2)
    root = uploads.extract_views(io.BytesIO(F.good_views(1, folder="")), tmp_path / "b", _settings(tmp_path))
    assert root == tmp_path / "b" / "views"


@pytest.mark.parametrize("name", ["../evil.txt", "scene/../../evil.txt", "/abs/evil.txt", "..\\evil.txt",
                                  "C:/evil.txt", "scene/..", ""])
def test_views_zip_refuses_escaping_paths(tmp_path, name):
    data = F.views_zip({"transforms.json": json.dumps(F.transforms(1)).encode(), name: b"x"})
    with pytest.raises(BadInput):
        uploads.extract_views(io.BytesIO(data), tmp_path / "in", _settings(tmp_path))
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs/evil.txt").exists()


def test_views_zip_refuses_symlinks_bombs_and_junk(tmp_path):
    good = json.dumps(F.transforms(1)).encode()
    cases = [
        (F.views_zip({"transforms.json": good}, symlinks={"images": "/etc"}), BadInput),
        (F.views_zip({"transforms.json": good, "big.bin": b"\0" * 5000}), TooLarge),  # limit below
        (F.views_zip({f"f{i}": b"x" for i in range(20)} | {"transforms.json": good}), TooLarge),
        (F.views_zip({"transforms.json": good, "images/000.png": F.png_bomb()}), TooLarge),
        (F.views_zip({"a/transforms.json": good, "b/transforms.json": good}), BadInput),
        (F.views_zip({"transforms.json": b"{not json"}), BadInput),
        (F.views_zip({"transforms.json": b'{"frames": []}'}), BadInput),
        (F.views_zip({"x/y/z/transforms.json": good}), BadInput),
        (b"PK\x03\x04 not really a zip", BadInput),
    ]
    s = _settings(tmp_path, max_views_files=10, max_views_bytes=4096)
    for i, (data, err) in enumerate(cases):
        with pytest.raises(err):
            uploads.extract_views(io.BytesIO(data), tmp_path / str(i), s)


def test_image_checks(tmp_path):
    s = _settings(tmp_path, max_image_pixels=64 * 64)
    saved = uploads.save_image(io.BytesIO(F.png_bytes(64, 64)), tmp_path, s)
    assert saved.name == "image.png" and saved.read_bytes() == F.png_bytes(64, 64)
    with pytest.raises(TooLarge):
        uploads.save_image(io.BytesIO(F.png_bytes(65, 64)), tmp_path, s)
    with pytest.raises(TooLarge):
        uploads.save_image(io.BytesIO(F.png_bomb()), tmp_path, s)
    with pytest.raises(BadInput):
        uploads.save_image(io.BytesIO(F.png_bytes()[:40]), tmp_path, s)  # truncated
    with pytest.raises(BadInput):
        uploads.save_image(io.BytesIO(b"GIF89a not an image"), tmp_path, s)
    with pytest.raises(BadInput):
        uploads.save_mesh(io.BytesIO(F.obj_bytes()), "mesh.exe", tmp_path)
    assert uploads.save_mesh(io.BytesIO(F.obj_bytes()), "../../x.OBJ", tmp_path) == tmp_path / "mesh.obj"


# --- serve ---------------------------------------------------------------------------------------------------
def test_serve_refuses_public_address_without_token(monkeypatch):
    monkeypatch.delenv("GEN3D_TOKEN", raising=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_host(host, None)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(BadInput):
            check_host(host, None)
        check_host(host, "secret")
    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "1"])
    with pytest.raises(BadInput, match="without a token"):
        args.func(args)  # refused before anything starts
