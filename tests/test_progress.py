"""Whole-job progress: stages weighted by their shares, ETA only once there is a pace, a message per stage, 100 %
at the end; the CLI's plain lines when its stream is not a terminal; Hugging Face's bars silent inside a job."""

from __future__ import annotations

import io

import pytest

from gen3d.backend.pipelines import JobRequest, Pipeline, RunContext, register
from gen3d.backend.pipelines.progress import JobProgress


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_stages_count_with_their_shares_and_the_eta_waits_for_a_pace():
    clock = Clock()
    job = JobProgress({"load": 1.0, "fit": 6.0, "export": 3.0}, clock)  # shares normalise to 0.1, 0.6, 0.3
    assert job.fraction == 0.0 and job.eta_s is None and job.message == "starting"
    job.begin("load")
    clock.t += 1.0
    job.end("load")
    job.begin("fit")
    job.report("fit", 1, 100)
    assert job.fraction == pytest.approx(0.1 + 0.6 * 0.01)
    assert job.eta_s is None  # one second in: no pace yet
    clock.t += 9.0
    job.report("fit", 50, 100)
    assert job.fraction == pytest.approx(0.4) and job.message == "fit 50/100"
    assert job.eta_s == pytest.approx(10.0 * 0.6 / 0.4)  # elapsed scaled by what is left
    job.end("fit")
    job.begin("export")
    job.report("export", 0, 1)  # a one-step stage: the message names it, without a step count
    assert job.fraction == pytest.approx(0.7) and job.message == "export"
    job.end("export")
    assert job.fraction == pytest.approx(1.0)
    job.finish()
    assert job.fraction == 1.0 and job.eta_s == 0.0 and job.message == "done"


def test_the_fraction_never_goes_back():
    """A stage entered twice (a second model loaded), a step count that restarts inside a stage, a nested stage
    without a share: the whole-job fraction holds where it was instead of falling back."""
    job = JobProgress({"load": 1.0, "work": 8.0, "export": 1.0}, Clock())
    seen = []
    for event in [("begin", "load"), ("end", "load"), ("begin", "work"), ("report", "work", 5, 10),
                  ("report", "preview", 0, 1), ("begin", "untimed"), ("end", "untimed"), ("report", "work", 8, 10),
                  ("end", "work"), ("begin", "load"), ("end", "load"), ("begin", "export"), ("end", "export")]:
        getattr(job, event[0])(*event[1:])
        seen.append(job.fraction)
    assert seen == sorted(seen) and seen[3] == pytest.approx(0.5) and seen[-1] == pytest.approx(1.0)


def test_every_method_declares_shares_of_its_stages_that_sum_to_one():
    """Each method of the package weighs its stages (measured stage timings; see the methods' comments); the shares
    are fractions of a run. Which stages a run times is checked against them by test_methods_smoke."""
    from gen3d.backend.pipelines import get, names

    ours = [get(n) for n in names() if type(get(n)).__module__.startswith("gen3d.")]
    assert len(ours) >= 10
    for pipeline in ours:
        assert pipeline.stage_shares, f"{pipeline.name} declares no stage_shares"
        assert sum(pipeline.stage_shares.values()) == pytest.approx(1.0, abs=0.01), pipeline.name
        assert min(pipeline.stage_shares.values()) > 0, pipeline.name


def test_undeclared_stages_fall_back_to_the_running_stage():
    job = JobProgress({}, Clock())
    job.begin("sleep")
    job.report("sleep", 3, 4)
    assert job.fraction == 0.75
    nested = JobProgress({"outer": 1.0, "inner": 1.0}, Clock())
    nested.begin("outer")
    nested.begin("inner")
    nested.report("inner", 1, 2)
    assert nested.fraction == pytest.approx(0.25)  # the innermost running stage counts
    nested.end("inner")
    nested.end("outer")
    assert nested.fraction == pytest.approx(1.0)


@register
class Staged(Pipeline):
    """Three timed stages with declared shares; the middle one loads a Hugging Face style bar."""

    name = "staged_test"
    inputs = {"prompt": "ignored"}
    stage_shares = {"prepare": 1.0, "work": 8.0, "write": 1.0}

    def run(self, request, ctx):
        from huggingface_hub.utils import tqdm as hub_tqdm

        with ctx.stage("prepare"):
            ctx.progress("prepare", 0, 1)
        with ctx.stage("work"):
            for i in range(20):
                ctx.progress("work", i + 1, 20)
            for _ in hub_tqdm(range(3), desc="third-party bar"):
                pass
        with ctx.stage("write"):
            ctx.progress("write", 0, 1)
        return {}


def test_cli_prints_plain_lines_when_not_a_terminal_and_library_bars_stay_silent(tmp_path, capfd):
    from gen3d.backend.commands.run import run_with_progress

    stream = io.StringIO()
    run_with_progress(JobRequest(method="staged_test"), RunContext(out_dir=tmp_path / "out"), stream)
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    # one line per stage (the interval is 10 s: the 20 quick steps of 'work' print once), then the end
    assert [line.split("] ")[1].split(",")[0] for line in lines[:-1]] == ["prepare", "work 1/20", "write"]
    percents = [float(line[1:line.index("%")]) for line in lines]
    assert percents == sorted(percents) and percents[0] == 0.0 and percents[-1] == 100.0
    assert lines[-1].startswith("[100.0%] done in")
    captured = capfd.readouterr()
    assert "third-party bar" not in captured.err + captured.out
    from huggingface_hub.utils import are_progress_bars_disabled

    assert not are_progress_bars_disabled()  # restored after the job
