"""What ``info`` and ``methods`` print for a person: each package once, and per method its inputs, presets with
their values, and whether its weights are present, missing (with the command) or smoke-test models."""

from __future__ import annotations

from gen3d.backend.__main__ import main
from gen3d.backend.weights import TINY_MARKER


def test_info_lists_each_package_once(capsys):
    assert main(["info"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert "bpy" in names and "torch" in names and len(names) == len(set(names)), names


def test_methods_text_shows_presets_and_weights_status(tmp_path, monkeypatch, capsys):
    (tmp_path / "triposr").mkdir()
    (tmp_path / "triposr" / TINY_MARKER).write_text("{}")  # the marker is what makes a folder smoke-test weights
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    lines = {name: [l.strip() for l in out.split(name + " ", 1)[1].splitlines()[1:5]]
             for name in ("lrm", "dreamgaussian-text", "reconstruct")}
    assert "weights: triposr tiny (smoke-test)" in lines["lrm"]
    assert "weights: sd21-base missing (python -m gen3d weights download sd21-base)" in lines["dreamgaussian-text"]
    assert "weights: none needed" in lines["reconstruct"]
    presets = next(l for l in lines["lrm"] if l.startswith("presets: "))
    assert "fast (mesh_resolution=128" in presets and "standard" in presets and "high (" in presets


def test_every_method_marks_a_few_main_options():
    """The served schema marks each method's main options (``x-main``); the add-on shows the rest as Advanced."""
    from gen3d.backend.commands.methods import describe
    from gen3d.backend.pipelines import names

    marked = {"lrm", "reconstruct", "texture", "dreamgaussian", "dreamgaussian-text", "magic123",
              "instant3d", "mvdream", "imagedream"} & set(names())
    assert {"lrm", "reconstruct", "texture"} <= marked
    for name in marked:
        props = describe(name)["options_schema"]["properties"]
        main = [k for k, p in props.items() if p.get("x-main")]
        assert 2 <= len(main) <= 6 and len(main) < len(props), (name, main)
