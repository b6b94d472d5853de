"""``weights download`` against a Hugging Face hub on loopback (tests/support/hub_server.py): the real
huggingface_hub client over real HTTP. The entry's files arrive byte for byte (only its patterns), and the CLI
reports bytes and percent, as plain lines when stderr is not a terminal (what logs and the Blender add-on read)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from support.hub_server import HubServer

REPO = Path(__file__).resolve().parents[1]


def test_cli_download_arrives_whole_and_reports_bytes_and_percent(tmp_path):
    served = tmp_path / "hub" / "stabilityai" / "TripoSR"
    served.mkdir(parents=True)
    model = np.random.default_rng(0).integers(0, 256, 12_000_000, dtype=np.uint8).tobytes()
    (served / "model.ckpt").write_bytes(model)
    (served / "config.yaml").write_text("model: tiny\n")
    (served / "README.md").write_text("not one of the entry's files\n")
    dest = tmp_path / "weights" / "triposr"
    with HubServer(tmp_path / "hub", chunk_s=0.25) as hub:  # 1 MB per 0.25 s: a download of about 3 s
        r = subprocess.run([sys.executable, "-m", "gen3d", "weights", "download", "triposr", "--dir", str(dest)],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
                                "HF_HOME": str(tmp_path / "hf_home")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (dest / "model.ckpt").read_bytes() == model and (dest / "config.yaml").read_text() == "model: tiny\n"
    assert not (dest / "README.md").exists()
    assert r.stdout.strip() == f"triposr: {dest}"
    lines = re.findall(r"^\[\s*([\d.]+)%\] triposr: (.*)$", r.stderr, re.M)
    percents = [float(p) for p, _ in lines]
    # the total is known from the first line (the hub's dry run), the count grows, the last line is the whole
    assert all(text.endswith(" of 12.0 MB") for _, text in lines), lines
    assert percents == sorted(percents) and 0 < len([p for p in percents if p < 100]) and lines[-1] == (
        "100.0", "12.0 MB of 12.0 MB")
    assert "\r" not in r.stderr  # no bar redrawn into a log


def test_plain_lines_are_rate_limited_and_the_last_count_is_never_lost():
    """At most one line per interval and per whole percent; a total the hub cannot tell (an older release: no dry
    run) still prints by time; the count held back by the limit is printed on close."""
    import io

    from gen3d.backend.transfer import DownloadPrinter

    t = [0.0]
    out = io.StringIO()
    printer = DownloadPrinter("sd15", out, interval_s=2.0, clock=lambda: t[0])
    for t[0], done in [(0.0, 0), (0.5, 1_000_000), (2.5, 1_005_000), (3.0, 5_000_000), (4.6, 9_000_000)]:
        printer(done, 10_000_000, "B")
    printer.close()
    assert out.getvalue().splitlines() == ["[  0.0%] sd15: 0 B of 10.0 MB", "[ 10.1%] sd15: 1.0 MB of 10.0 MB",
                                           "[ 90.0%] sd15: 9.0 MB of 10.0 MB"]
    out = io.StringIO()
    printer = DownloadPrinter("old", out, interval_s=2.0, clock=lambda: t[0])
    for t[0], done in [(10.0, 1), (12.5, 2), (13.0, 3)]:
        printer(done, 0, "B") if done < 3 else printer(done, 5, "files")
    printer.close()
    assert out.getvalue().splitlines() == ["old: 1 B", "old: 2 B", "[ 60.0%] old: 3 of 5 files"]
