"""dream.py's feature-visualisation flags in-process: bad input (one line, nothing written), seeded batches,
a fine-tuned model's classes swept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import models
from deepdream.errors import exit_code
from deepdream.sweep import SHEET_NAME

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("dream_script", ROOT / "dream.py")
dream_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dream_script)

@pytest.fixture(scope="module")
def effnet(weights_dir):
    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    return models.load_model("efficientnet_lite0")


def dream_cli(*argv: str) -> int:
    return exit_code(lambda: dream_script.main([*map(str, argv)]))


@pytest.mark.parametrize("argv,message", [
    (["--class", "goldfsh"], "unknown class 'goldfsh'; closest: goldfish"),
    (["--class", "1000"], "class index 1000 is out of range"),
    (["--neuron", "block5:999"], "layer 'block5' of efficientnet_lite0 has 80 channels"),
    (["--layers", "block5", "--channels", "0-3", "--sweep"], "--sweep writes one image per item: give a folder"),
    (["--class", "pizza", "--diversity", "100", "--batch", "1"], "--diversity 100 needs several images"),
    (["--class", "pizza", "--octaves", "3"], "--octaves shapes a dream, not a render"),
    (["--class", "pizza", "--input", str(ROOT / "assets" / "chelsea.png")], "render from noise; drop --input"),
    (["--class", "all"], "--class all renders every class: add --sweep"),
    (["--layers", "block5", "block6", "--channels", "0-3", "--sweep", "--output", "sweep"], "takes one layer"),
    (["--class", "pizza", "--no-robustness", "--rotate-range", "5"], "--no-robustness switches off"),
    (["--layers", "block5", "--channels", "all"], "--channels all renders every channel one by one"),
])
def test_bad_render_input_is_one_line_and_writes_nothing(effnet, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert dream_cli("--model", "efficientnet_lite0", *argv, "--quiet") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_render_batch_is_reproducible(effnet, tmp_path):
    args = ["--model", "efficientnet_lite0", "--class", "goldfish", "--width", "64", "--height", "64", "--steps", "3",
            "--batch", "2", "--diversity", "10", "--seed", "5", "--quiet"]
    assert dream_cli(*args, "--output", tmp_path / "a.png") == 0
    assert dream_cli(*args, "--output", tmp_path / "b.png") == 0
    for i in (1, 2):
        assert (tmp_path / f"a_{i}.png").read_bytes() == (tmp_path / f"b_{i}.png").read_bytes()
    assert (tmp_path / "a_1.png").read_bytes() != (tmp_path / "a_2.png").read_bytes()


def test_cli_sweep_of_classes_of_a_fine_tuned_model(effnet, tmp_path):
    """--class all sweeps the weights file's own class names."""
    from models.weights import read_weights, save_weights

    arrays, meta = read_weights(models.default_weights_path("efficientnet_lite0"))
    arrays["fc.weight"], arrays["fc.bias"] = arrays["fc.weight"][:2], arrays["fc.bias"][:2]
    save_weights(tmp_path / "tuned.npz", arrays, {**meta, "num_classes": 2, "class_names": ["stripes", "discs"]})
    out = tmp_path / "sweep"
    assert dream_cli("--weights", tmp_path / "tuned.npz", "--class", "all", "--sweep", "--output", out,
                     "--width", "64", "--height", "64", "--steps", "2", "--seed", "0", "--quiet") == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000_stripes.png", "0001_discs.png", SHEET_NAME,
                                                     "index.html", "index_files"]
