"""The main install has no torch: every script that dreams, renders, makes videos or fine-tunes runs
with torch impossible to import, from a first run (the package weights converted on first use) on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

#: Runs a script as ``python script.py ARGS`` would, with torch and torchvision unimportable; the
#: last line says its exit status, which of them something tried to import, and which of the
#: torch-side packages got loaded.
RUN_WITHOUT_TORCH = """
import importlib.abc, runpy, sys

tried = []

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            tried.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)   # as when it is not installed
        return None

sys.meta_path.insert(0, NoTorch())
script, *sys.argv[1:] = sys.argv[1:]
sys.argv[0] = script
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code
loaded = [m for m in ("convert", "torchref") if m in sys.modules]
print("exit", code, "tried:", ",".join(sorted(set(tried))), "loaded:", ",".join(loaded))
"""


def run_without_torch(script: str, args: list[str], weights: Path) -> tuple[str, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-c", RUN_WITHOUT_TORCH, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "DEEPDREAM_WEIGHTS_DIR": str(weights)})
    lines = proc.stdout.splitlines()
    return (lines[-1] if lines else ""), proc


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("red", "blue"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            pixels[..., 0 if name == "red" else 2] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def clip(path: Path) -> Path:
    from benchmarks.clips import photo_strip, write_clip

    strip = photo_strip(64, 96)
    write_clip(path, [np.ascontiguousarray(strip[:, i * 4:i * 4 + 64]) for i in range(3)], audio=None)
    return path


#: script, its arguments ({tmp}: the test's folder), and what it writes there.
CASES = {
    "dream": ("dream.py", ["--model", "efficientnet_lite0", "--input", "assets/chelsea.png", "--steps", "1",
                           "--octaves", "1", "--max-size", "64", "--output", "{tmp}/dream.png", "--quiet"], "dream.png"),
    "render": ("dream.py", ["--model", "efficientnet_lite0", "--class", "goldfish", "--steps", "2", "--width", "64",
                            "--height", "64", "--output", "{tmp}/goldfish.png", "--quiet"], "goldfish.png"),
    "zoom video": ("dream_video.py", ["--model", "efficientnet_lite0", "--frames", "2", "--width", "64", "--height",
                                      "64", "--steps", "1", "--octaves", "1", "--output", "{tmp}/zoom.gif", "--quiet"],
                   "zoom.gif"),
    "clip video": ("dream_video.py", ["--model", "efficientnet_lite0", "--video", "{tmp}/clip.mkv", "--steps", "1",
                                      "--octaves", "1", "--output", "{tmp}/dreamed.mkv", "--quiet"], "dreamed.mkv"),
    "fine-tuning": ("train_dream.py", ["--model", "efficientnet_lite0", "--data", "{tmp}/data", "--epochs", "1",
                                       "--batch-size", "4", "--image-size", "48", "--val-split", "0.25",
                                       "--checkpoint-dir", "{tmp}/ck", "--out", "{tmp}/tuned.npz", "--quiet"],
                    "tuned.npz"),
    "colour matrix": ("calc_cm.py", ["--data", "{tmp}/data", "--out", "{tmp}/cm.npy", "--quiet"], "cm.npy"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_first_run_without_torch(case, tmp_path):
    """Empty weights folder: the script converts the package weights itself (``convert`` is loaded
    for that), and nothing tries to import torch or torchvision."""
    script, args, output = CASES[case]
    image_folder(tmp_path / "data")
    if case == "clip video":
        clip(tmp_path / "clip.mkv")
    weights = tmp_path / "weights"
    weights.mkdir()
    report, proc = run_without_torch(script, [a.format(tmp=tmp_path) for a in args], weights)
    needs_model = script != "calc_cm.py"
    assert report == f"exit 0 tried:  loaded: {'convert' if needs_model else ''}", proc.stderr
    assert (tmp_path / output).is_file()
    if needs_model:
        assert (weights / "efficientnet_lite0_mlx.npz").is_file()
        assert "converting the installed package weights" in proc.stderr


def test_dreaming_loads_no_converter_once_weights_exist(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    for expected in ("convert", ""):            # the first run converts; the second only dreams
        report, proc = run_without_torch("dream.py", ["--model", "efficientnet_lite0", "--input", "assets/chelsea.png",
                                                      "--steps", "1", "--octaves", "1", "--max-size", "64", "--output",
                                                      str(tmp_path / "dream.png"), "--quiet"], weights)
        assert report == f"exit 0 tried:  loaded: {expected}", proc.stderr


def test_exporters_without_torch(tmp_path):
    """Converting a package's or a local checkpoint needs no torch; a download says what to install."""
    import torch

    from convert.torch_weights import torchvision_model

    torch.manual_seed(0)
    torch.save(torchvision_model("alexnet", pretrained=False).state_dict(), tmp_path / "alexnet.pth")
    cases = [("export_efficientnet_lite0.py", ["--out", f"{tmp_path}/lite0.npz"], "exit 0"),
             ("export_alexnet.py", ["--from-pth", f"{tmp_path}/alexnet.pth", "--out", f"{tmp_path}/alexnet.npz"],
              "exit 0"),
             ("export_resnet.py", ["--out", f"{tmp_path}/resnet.npz"], "exit 1")]
    for script, args, status in cases:
        report, proc = run_without_torch(script, args, tmp_path)
        assert report.startswith(f"{status} tried: "), proc.stderr
    assert (tmp_path / "lite0.npz").is_file() and (tmp_path / "alexnet.npz").is_file()
    assert proc.stderr == ("error: downloading the pretrained weights needs torch and torchvision, which the main "
                           "install leaves out: pip install -r requirements-dev.txt\n")
    assert not (tmp_path / "resnet.npz").exists()
