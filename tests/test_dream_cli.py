"""dream.py end to end, as a user runs it (subprocess), on efficientnet_lite0's real weights.

The proofs re-measure the target layer's activation from the *saved file*. Images are kept at
96-192 px and a few steps so the whole file runs in about a minute or two on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

import models
from deepdream.colour import IMAGENET_SQRT_COV
from deepdream.image_io import load_image, noise_image
from models.weights import read_weights, save_weights
from tests.pages import check_site

ROOT = Path(__file__).resolve().parent.parent
DREAM = ROOT / "dream.py"
CHELSEA = ROOT / "assets" / "chelsea.png"
COFFEE = ROOT / "assets" / "coffee.png"
#: A small, quick dream on block10 (2 octaves).
QUICK = ["--model", "efficientnet_lite0", "--layers", "block10", "--octaves", "2", "--scale", "1.5", "--steps", "6",
         "--lr", "0.09", "--jitter", "16", "--smoothing", "0.3", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def effnet(weights_dir):
    """The real weights, converted once into the session's weights folder (subprocesses inherit it)."""
    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    return models.load_model("efficientnet_lite0")


def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DREAM), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env or dict(os.environ), timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return result


def activations(model, rgb: np.ndarray, layer: str = "block10") -> np.ndarray:
    return np.array(model(model.preprocess(mx.array(rgb[None])), outputs=[layer])[layer])


def score(model, rgb: np.ndarray, layer: str = "block10") -> float:
    return float(np.mean(activations(model, rgb, layer) ** 2))


def saturation(rgb: np.ndarray) -> float:
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    return float(np.mean(np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-8), 0.0)))


# -- the dream works ------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--tile-size", "128", "--steps", "8"]], ids=["whole", "tiled"])
def test_dream_raises_target_layer_measured_from_file(effnet, tmp_path, extra):
    out = tmp_path / "dream.png"
    ok(run("--input", CHELSEA, "--max-size", 192, "--output", out, *QUICK, *extra))
    start, dreamed = load_image(CHELSEA, max_size=192), load_image(out)
    assert dreamed.shape == start.shape == (128, 192, 3)
    ratio = score(effnet, dreamed) / score(effnet, start)
    assert ratio >= 1.5, ratio


def test_seed_gives_identical_bytes(effnet, tmp_path):
    args = ["--input", CHELSEA, "--max-size", 96, *QUICK[:-3], "--steps", "3", "--quiet"]
    ok(run(*args, "--seed", 3, "--output", tmp_path / "a.png"))
    ok(run(*args, "--seed", 3, "--output", tmp_path / "b.png"))
    ok(run(*args, "--seed", 4, "--output", tmp_path / "c.png"))
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b
    assert a != c


def test_noise_dream_default_model_and_output(effnet, tmp_path):
    """No --input: dreams from seeded noise; default model (no googlenet here) and default output path."""
    result = ok(run("--width", 128, "--height", 96, "--octaves", 2, "--steps", 6, "--seed", 5, cwd=tmp_path))
    out = tmp_path / "outputs" / "dream_efficientnet_lite0.png"
    assert Image.open(out).size == (128, 96)
    assert "export_googlenet.py" in result.stderr  # the notice that says how to get the default model
    assert str(Path("outputs") / "dream_efficientnet_lite0.png") in result.stdout
    start = noise_image(96, 128, np.random.default_rng(5))
    assert score(effnet, load_image(out)) >= 1.5 * score(effnet, start)


def test_channels_amplify_only_those(effnet, tmp_path):
    out = tmp_path / "ch.png"
    ok(run("--input", CHELSEA, "--max-size", 160, "--output", out, *QUICK, "--channels", 3, 17))
    before, after = activations(effnet, load_image(CHELSEA, max_size=160)), activations(effnet, load_image(out))
    chosen = [3, 17]
    others = [c for c in range(before.shape[-1]) if c not in chosen]
    gain_chosen = np.mean(after[..., chosen] ** 2) / np.mean(before[..., chosen] ** 2)
    gain_others = np.mean(after[..., others] ** 2) / np.mean(before[..., others] ** 2)
    assert gain_chosen >= 2.0 and gain_chosen > 3 * gain_others, (gain_chosen, gain_others)


def test_guide_pulls_features_toward_the_guide(effnet, tmp_path):
    ok(run("--input", CHELSEA, "--max-size", 192, "--output", tmp_path / "plain.png", *QUICK))
    ok(run("--input", CHELSEA, "--max-size", 192, "--output", tmp_path / "guided.png", *QUICK, "--guide", COFFEE))
    guide = activations(effnet, load_image(COFFEE, max_size=512)).reshape(-1, 112)
    guide_n = guide / np.linalg.norm(guide, axis=1, keepdims=True)

    def best_match(path_or_rgb) -> float:
        rgb = load_image(path_or_rgb) if isinstance(path_or_rgb, Path) else path_or_rgb
        a = activations(effnet, rgb).reshape(-1, 112)
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)
        return float((a @ guide_n.T).max(axis=1).mean())  # mean cosine to the best guide feature

    start = best_match(load_image(CHELSEA, max_size=192))
    plain, guided = best_match(tmp_path / "plain.png"), best_match(tmp_path / "guided.png")
    assert guided > start + 0.06 and guided > plain + 0.04, (start, plain, guided)


def test_lap_norm(effnet, tmp_path):
    ok(run("--input", CHELSEA, "--max-size", 160, "--output", tmp_path / "lap.png", *QUICK, "--lap-norm"))
    ok(run("--input", CHELSEA, "--max-size", 160, "--output", tmp_path / "std.png", *QUICK))
    lap = load_image(tmp_path / "lap.png")
    assert score(effnet, lap) >= 1.5 * score(effnet, load_image(CHELSEA, max_size=160))
    assert np.abs(lap - load_image(tmp_path / "std.png")).mean() > 0.01  # a different gradient, a different dream


def test_decorrelate_keeps_colours(effnet, tmp_path):
    strong = ["--steps", "10", "--lr", "0.15"]
    ok(run("--input", CHELSEA, "--max-size", 192, "--output", tmp_path / "rgb.png", *QUICK, *strong))
    ok(run("--input", CHELSEA, "--max-size", 192, "--output", tmp_path / "dec.png", *QUICK, *strong,
           "--decorrelate", "imagenet"))
    start = load_image(CHELSEA, max_size=192)
    plain, dec = load_image(tmp_path / "rgb.png"), load_image(tmp_path / "dec.png")
    assert score(effnet, dec) >= 1.5 * score(effnet, start)
    # pixel-space steps saturate every colour; decorrelated ones keep the photo's palette
    assert saturation(plain) > saturation(start) + 0.05
    assert abs(saturation(dec) - saturation(start)) < 0.04
    spread = lambda rgb: np.ptp(rgb.reshape(-1, 3).mean(axis=0))  # noqa: E731  (hue cast of the whole image)
    assert abs(spread(dec) - spread(start)) < 0.04


def test_decorrelate_model_uses_the_weights_file_matrix(effnet, tmp_path, weights_dir):
    arrays, meta = read_weights(weights_dir / "efficientnet_lite0_mlx.npz")
    tuned = tmp_path / "tuned.npz"
    save_weights(tuned, arrays, {**meta, "colour_matrix": (IMAGENET_SQRT_COV * 0.5).tolist()})
    out = tmp_path / "m.png"
    ok(run("--input", CHELSEA, "--max-size", 96, "--output", out, "--weights", tuned, "--decorrelate", "model",
           "--octaves", 1, "--steps", 2, "--quiet"))
    assert Image.open(out).size == (96, 64)
    # without the matrix in the file: a clear error
    result = run("--input", CHELSEA, "--max-size", 96, "--output", tmp_path / "n.png", "--decorrelate", "model",
                 "--model", "efficientnet_lite0", "--quiet")
    assert result.returncode == 1 and "colour_matrix" in result.stderr and not (tmp_path / "n.png").exists()


def test_preset_with_overrides_runs(effnet, tmp_path):
    out = tmp_path / "p.jpg"
    ok(run("--input", CHELSEA, "--max-size", 96, "--output", out, "--preset", "efficientnet_lite0",
           "--octaves", 1, "--steps", 2, "--quiet"))
    assert Image.open(out).format == "JPEG"


def test_model_all_writes_each_model_and_a_contact_sheet(effnet, tmp_path, weights_dir):
    """Two models with weights (efficientnet_lite0 + a random-init googlenet export), the rest skipped."""
    if not (ROOT / "export_googlenet.py").exists():
        pytest.skip("export_googlenet.py is not in this checkout")
    own = tmp_path / "weights"
    own.mkdir()
    shutil.copy(weights_dir / "efficientnet_lite0_mlx.npz", own)
    env = {**os.environ, "DEEPDREAM_WEIGHTS_DIR": str(own)}
    export = subprocess.run([sys.executable, str(ROOT / "export_googlenet.py"), "--random-init", "--seed", "0",
                             "--out", str(own / "googlenet_mlx.npz")], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    folder = tmp_path / "all"
    result = ok(run("--input", CHELSEA, "--max-size", 96, "--model", "all", "--output", folder,
                    "--octaves", 1, "--steps", 2, "--seed", 0, env=env))
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["chelsea_contact_sheet.png", "chelsea_efficientnet_lite0.png", "chelsea_googlenet.png",
                     "index.html", "index_files"]
    assert "skipping vgg16: no weights (run `python export_vgg.py --model vgg16`)" in result.stderr
    sheet = Image.open(folder / "chelsea_contact_sheet.png")
    assert sheet.width > 2 * 256 and sheet.height > 64  # input + 2 dreams: a 2x2 grid of 256 px cells
    # The gallery page: the input, then each model's dream, whose command remakes its file byte for byte.
    page = check_site(folder / "index.html")[(folder / "index.html").resolve()]
    assert [(li.get("class"), label) for li, label in zip(page.cells(), page.labels())] == [
        ("source", "input"), ("", "googlenet"), ("", "efficientnet_lite0")]
    commands = page.text("code")[1:]   # after the job's own command
    assert len(commands) == 2 and all("--seed 0" in c and "--octaves 1" in c for c in commands)
    # From noise too: each model's start is drawn as `--model NAME --seed S` draws it.
    noise = tmp_path / "noise"
    ok(run("--width", 48, "--height", 48, "--model", "all", "--output", noise, "--octaves", 1, "--steps", 2,
           "--seed", 4, "--quiet", env=env))
    commands.append(check_site(noise / "index.html")[(noise / "index.html").resolve()].text("code")[-1])
    for command in commands:
        words = shlex.split(command)
        made = Path(words[words.index("--output") + 1])
        before = made.read_bytes()
        made.unlink()
        ok(run(*words[2:], "--quiet", env=env))
        assert made.read_bytes() == before


def test_list_layers_and_info(effnet):
    result = ok(run("--list-layers", "--model", "efficientnet_lite0"))
    lines = result.stdout.split("\n")
    assert "block10  (default)" in lines and "stem" in lines and "head" in lines
    # listing needs no weights: googlenet's names come from its architecture
    assert "inception4c" in ok(run("--list-layers", "--model", "googlenet")).stdout
    assert lines[-2].startswith("logits  (class scores")      # accepted by --layers, so listed too
    info = ok(run("--info")).stdout
    assert f"mlx {mx.__version__}" in info and "blas:" in info and "native CPU kernels" in info
    assert "efficientnet_lite0" in info and "weights missing: run `python export_vgg.py --model vgg16`" in info
    assert "processes: 1 process, " in info


# -- bad input: one line, non-zero exit, no traceback, no file ----------------------------------------

def _bad_inputs(tmp: Path) -> dict[str, tuple[list, str]]:
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "empty.npz").write_bytes(b"")
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp / "blocker").write_text("a file where a folder should be")
    return {
        "missing": (["--input", tmp / "nope.png"], "not found"),
        "empty": (["--input", tmp / "empty.png"], "empty"),
        "corrupt": (["--input", tmp / "corrupt.png"], "cannot read"),
        "unknown model": (["--model", "resnet9000"], "Available models: googlenet"),
        "unknown layer": (["--model", "efficientnet_lite0", "--layers", "blok10"], "Did you mean 'block10'"),
        "zero steps": (["--steps", "0"], "--steps"),
        "zero octaves": (["--octaves", "0"], "--octaves"),
        "negative scale": (["--scale", "-1.4"], "--scale"),
        "negative lr": (["--lr", "-0.5"], "--lr"),
        "not a number": (["--steps", "many"], "not a whole number"),
        "size not a number": (["--max-size", "big"], "'big' is not a whole number"),
        "zero max size": (["--max-size", "0"], "--max-size must be a positive number of pixels"),
        "negative seed": (["--seed", "-1"], "--seed must be between 0"),
        "unwritable output": (["--output", tmp / "blocker" / "out.png"], "cannot write"),
        "output is input": (["--output", CHELSEA], "is the input image"),
        "missing weights": (["--model", "googlenet"], "python export_googlenet.py"),
        "bad channel": (["--model", "efficientnet_lite0", "--layers", "block10", "--channels", "500"], "112 channels"),
        "bad guide": (["--model", "efficientnet_lite0", "--guide", tmp / "nope.jpg"], "guide image"),
        "empty weights": (["--weights", tmp / "empty.npz"], "is an empty file (0 bytes)"),
    }


BAD_CASES = ["missing", "empty", "corrupt", "unknown model", "unknown layer", "zero steps", "zero octaves",
             "negative scale", "negative lr", "not a number", "size not a number", "zero max size", "negative seed",
             "unwritable output", "output is input", "missing weights", "bad channel", "bad guide", "empty weights"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_line(effnet, tmp_path, case):
    args, expected = _bad_inputs(tmp_path)[case]
    default_input = [] if "--input" in args else ["--input", CHELSEA]
    default_output = [] if "--output" in args else ["--output", tmp_path / "out.png"]
    result = run(*default_input, *default_output, *args, "--quiet")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "out.png").exists()
    assert not (tmp_path / "blocker" / "out.png").exists()


def test_a_training_checkpoint_dreams_as_its_model(effnet, tmp_path):
    """A train_dream.py checkpoint given to --weights (once a TypeError traceback): the dream runs
    with the checkpoint's weights."""
    from tests.test_train_dream import make_checkpoint

    checkpoint = make_checkpoint(tmp_path)
    out = tmp_path / "dream.png"
    ok(run("--weights", checkpoint, "--width", 64, "--height", 64, "--octaves", 1, "--steps", 2, "--layers", "block10",
           "--quiet", "--output", out))
    with Image.open(out) as img:
        assert img.size == (64, 64)


def read_until(proc: subprocess.Popen, pattern: bytes, timeout: float) -> bytes:
    """The child's stderr up to the first match of ``pattern``; the test fails (and the child is
    killed) if the child ends or ``timeout`` passes first, so no signal is ever sent early."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, seen):
        remaining = deadline - time.monotonic()
        ready = select.select([proc.stderr], [], [], max(0.0, remaining))[0] if remaining > 0 else []
        if not ready:
            proc.kill()
            pytest.fail(f"no {pattern!r} on stderr after {timeout:.0f} s: {seen[-2000:]!r}")
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            proc.wait()
            pytest.fail(f"exited ({proc.returncode}) before {pattern!r}: {seen[-2000:]!r}")
        seen += chunk
    return seen


def test_ctrl_c_exits_130_without_a_file(effnet, tmp_path, terminal_sigint):
    out_dir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(DREAM), "--input", str(CHELSEA), "--output", str(out_dir / "x.png"),
                             "--model", "efficientnet_lite0", "--steps", "500", "--octaves", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    # The dream is under way once tqdm shows a finished step (it skips redraws, so not always "1/500"):
    # by then every kernel is built, and 499 steps of work remain. A new machine first builds the
    # native and MLX kernels, which can take minutes on a busy one.
    seen = read_until(proc, rb"\b[1-9]\d*/500", timeout=900)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (seen + err)[-2000:]
    assert b"Traceback" not in err
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_tiled_large_image_memory_is_bounded_by_the_tile(effnet, tmp_path):
    """1200x900 with 256 px tiles vs a 256x192 image (one tile): peak RSS grows only by image-sized buffers."""
    photo = Image.open(COFFEE).convert("RGB")
    photo.resize((1200, 900)).save(tmp_path / "big.png")
    photo.resize((256, 192)).save(tmp_path / "small.png")
    probe = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
             "print(json.dumps([r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    peaks = {}
    for name in ("small", "big"):
        cmd = [sys.executable, "-c", probe, sys.executable, str(DREAM), "--input", str(tmp_path / f"{name}.png"),
               "--output", str(tmp_path / f"{name}_out.png"), "--model", "efficientnet_lite0", "--layers", "block10",
               "--octaves", "1", "--steps", "1", "--tile-size", "256", "--quiet"]
        code, peak = json.loads(subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                               timeout=600).stdout.strip().splitlines()[-1])
        assert code == 0
        peaks[name] = peak / (1 << 20 if sys.platform == "darwin" else 1 << 10)  # ru_maxrss: bytes on macOS, KiB on Linux
    growth = peaks["big"] - peaks["small"]
    # Measured: ~260 MB of image-sized buffers; the same dream untiled peaks ~1 GB above the small run.
    assert growth < 450, peaks
    assert Image.open(tmp_path / "big_out.png").size == (1200, 900)


def test_a_first_dream_builds_the_kernels_before_its_bar(effnet, tmp_path, monkeypatch, capsys):
    """On a new machine the native build (a minute or so) comes first, on lines of its own, then the bar."""
    import types

    import dream
    from fastlayers import native

    module = native.load()
    if module is None:
        pytest.skip(f"native kernels: {native.status}")

    def build_commands(command, **kwargs):     # cmake's configure and build, as if they ran
        if "--build" in command:
            (Path(command[command.index("--build") + 1]) / "_native.so").write_bytes(b"")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(native, "subprocess", types.SimpleNamespace(run=build_commands, STDOUT=subprocess.STDOUT))
    monkeypatch.setattr(native, "cache_root", lambda: tmp_path / "cache")       # nothing built here yet
    monkeypatch.setattr(native, "_import", lambda path: module)
    for name in ("_tried", "_module", "status"):
        monkeypatch.setattr(native, name, getattr(native, name))
    monkeypatch.setattr(native, "_tried", False)
    assert dream.main(["--model", "efficientnet_lite0", "--input", str(CHELSEA), "--max-size", "64", "--octaves",
                       "1", "--steps", "2", "--output", str(tmp_path / "out.png")]) == 0
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    building = next(i for i, line in enumerate(lines) if line.startswith("deepdream: building the native CPU kernels"))
    built = next(i for i, line in enumerate(lines) if line.startswith("deepdream: native CPU kernels built in"))
    bar = next(i for i, line in enumerate(lines) if "step" in line and "|" in line)
    assert building < built < bar, lines
    assert "a minute or so" in lines[building]


def test_the_default_model_notice_comes_once_after_a_dream_and_never_before_an_error(effnet, tmp_path, monkeypatch,
                                                                                     capsys):
    """Without googlenet's weights the default model is efficientnet_lite0: said after the first dream
    that works (once per weights folder), never before an error line."""
    import dream
    from deepdream import cache
    from deepdream.errors import exit_code

    monkeypatch.setattr(cache, "cache_dir", lambda: tmp_path / "cache")
    assert not models.weights_available("googlenet")
    notice = "googlenet weights not found, so this used efficientnet_lite0"

    def run_dream(*args: str) -> tuple[int, list[str]]:
        code = exit_code(lambda: dream.main(["--input", str(CHELSEA), "--max-size", "64", "--octaves", "1",
                                            "--steps", "1", *args]))
        return code, capsys.readouterr().err.strip().splitlines()

    code, lines = run_dream("--steps", "0")
    assert code == 1 and lines == ["error: --steps must be at least 1 (got 0)"], lines
    code, lines = run_dream("--output", str(tmp_path / "first.png"))
    assert code == 0 and notice in lines[-1], lines
    code, lines = run_dream("--output", str(tmp_path / "second.png"))
    assert code == 0 and not any(notice in line for line in lines), lines
