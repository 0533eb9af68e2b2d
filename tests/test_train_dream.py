"""train_dream.py: fine-tuning efficientnet_lite0's real ImageNet weights on a tiny shapes dataset.

The classes differ by shape only (colours, positions and sizes are random), so validation
accuracy well above chance (1/3) means the network learned the new classes. The same run is
then repeated with a Ctrl-C in the middle and ``--resume``: its final weights must equal the
uninterrupted run's. Sizes are CI-sized: 72 images of 64-96 px, training crops of 64 px.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from PIL import Image, ImageDraw

import models
import train_dream
from deepdream.colour import validate as validate_colour_matrix
from deepdream.dataset import (
    eval_view,
    epoch_order,
    fill_batches,
    scan_image_folder,
    stratified_split,
    train_view,
)
from deepdream.training import StopRequest, TrainConfig, export_dream_weights, fit, prepare_run
from models.weights import read_metadata, read_weights, save_weights

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("circle", "square", "triangle")
#: 3 classes, 18 validation images: 0.8 is 15 of 18 right; chance is 6.
MIN_VAL_ACC = 0.8
TRAIN_ARGS = ["--model", "efficientnet_lite0", "--epochs", "4", "--batch-size", "16", "--image-size", "64",
              "--val-split", "0.25", "--seed", "0", "--quiet"]


def draw_shape(shape: str, rng: np.random.Generator) -> Image.Image:
    size = int(rng.integers(64, 97))
    bg = rng.integers(0, 256, 3)
    fg = (bg + rng.integers(80, 176, 3)) % 256  # always clearly different from the background
    img = Image.new("RGB", (size, size), tuple(int(v) for v in bg))
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.22, 0.38)
    cx, cy = rng.uniform(r + 2, size - r - 2, 2)
    fill = tuple(int(v) for v in fg)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def make_image_folder(root: Path, classes: Sequence[str], draw: Callable[[str, np.random.Generator], Image.Image],
                      per_class: int, seed: int) -> Path:
    """An ImageFolder of ``per_class`` images ``draw(class, rng)`` per class, seeded."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(name, rng).save(root / name / f"{name}_{i:03d}.png")
    return root


def make_shapes(root: Path, per_class: int, seed: int) -> Path:
    return make_image_folder(root, SHAPES, draw_shape, per_class, seed)


def make_checkpoint(folder: Path) -> Path:
    """A real train_dream.py checkpoint (``checkpoints/<run>/last.npz``): efficientnet_lite0 after
    one eager epoch on 3 shapes x 3 images; the default weights must exist (the ``effnet`` fixture)."""
    data = scan_image_folder(make_shapes(folder / "data", per_class=3, seed=5))
    run = prepare_run(TrainConfig(model="efficientnet_lite0", epochs=1, batch_size=3, image_size=48, val_split=0.0,
                                  freeze_to="block10"), data)
    checkpoint = folder / "ck" / "last.npz"
    assert fit(run, checkpoint, StopRequest(), quiet=True, compile=False, log=lambda _: None)
    return checkpoint


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_dream.py"), *args],
                          capture_output=True, text=True, timeout=timeout)


def val_accuracies(stdout: str) -> list[float]:
    """The per-epoch lines' validation accuracies."""
    return [float(v) for v in re.findall(r"^epoch \d+/\d+ .* val acc ([0-9.]+)", stdout, flags=re.MULTILINE)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "shapes", per_class=24, seed=0)


@pytest.fixture(scope="module")
def effnet(weights_dir: Path) -> Path:
    """The real efficientnet_lite0 weights, converted into weights_dir once (a notice on stderr)."""
    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    models.load_model("efficientnet_lite0")
    return weights_dir / "efficientnet_lite0_mlx.npz"


@pytest.fixture(scope="module")
def trained(shapes: Path, effnet: Path, tmp_path_factory) -> dict:
    """The uninterrupted reference run."""
    work = tmp_path_factory.mktemp("run_a")
    out = work / "shapes.npz"
    started = time.perf_counter()
    proc = run_cli(["--data", str(shapes), *TRAIN_ARGS, "--checkpoint-dir", str(work / "ck"), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "ckpt": work / "ck" / "last.npz", "stdout": proc.stdout,
            "seconds": time.perf_counter() - started}


def test_fine_tuning_learns_shapes(trained: dict) -> None:
    accs = val_accuracies(trained["stdout"])
    assert len(accs) == 4, trained["stdout"]  # one line per epoch
    assert accs[-1] >= MIN_VAL_ACC, trained["stdout"]
    losses = [float(v) for v in re.findall(r"train loss ([0-9.]+)", trained["stdout"])]
    assert losses[-1] < losses[0] * 0.6


def test_output_file_is_a_dream_model_of_the_new_classes(trained: dict, effnet: Path) -> None:
    arrays, meta = read_weights(trained["out"])
    assert meta["architecture"] == "efficientnet_lite0" and meta["num_classes"] == 3
    assert meta["class_names"] == list(SHAPES)
    assert meta["source"].startswith("fine-tuned from efficientnet_lite0") and "shapes" in meta["source"]
    # Dreaming normalises like training did: the base model's (ImageNet) mean/std.
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    matrix = validate_colour_matrix(np.array(meta["colour_matrix"]))
    assert 0.05 < np.linalg.norm(matrix, axis=0).max() < 1.0  # the data's spread, not a 17x-shrunk one
    assert not any(k.startswith("aux") for k in arrays) and meta["config"] == {}

    # Frozen stages (stem .. block4, BN statistics included) are exactly the ImageNet ones;
    # later stages were trained.
    base, _ = read_weights(effnet)
    frozen = [k for k in arrays if re.match(r"(stem|blocks\.[0-4])\.", k)]
    trained_keys = [k for k in arrays if re.match(r"(blocks\.(1[0-5]|[5-9])|head)\.", k)]
    assert frozen and all(np.array_equal(arrays[k], base[k]) for k in frozen)
    assert sum(not np.allclose(arrays[k], base[k]) for k in trained_keys) > len(trained_keys) // 2

    # The loaded model recognises shapes it has never seen.
    model = models.load_model(weights=trained["out"])
    assert model.class_names == list(SHAPES)
    rng = np.random.default_rng(123)
    images, labels = [], []
    for label, shape in enumerate(SHAPES):
        for _ in range(8):
            images.append(eval_view(draw_shape(shape, rng), 64))
            labels.append(label)
    logits = model(model.preprocess(mx.array(np.stack(images))))["logits"]
    accuracy = float((np.array(mx.argmax(logits, axis=1)) == np.array(labels)).mean())
    assert accuracy >= MIN_VAL_ACC


def test_fine_tuned_file_dreams(trained: dict, tmp_path: Path) -> None:
    """dream.py reads the file, including the colour matrix stored in it (--decorrelate model)."""
    out = tmp_path / "dream.png"
    proc = subprocess.run([sys.executable, str(ROOT / "dream.py"), "--weights", str(trained["out"]),
                           "--width", "96", "--height", "96", "--octaves", "2", "--steps", "3",
                           "--layers", "block10", "--decorrelate", "model", "--seed", "0", "--quiet",
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        assert img.size == (96, 96)
        assert np.asarray(img.convert("RGB"), np.float32).std() > 1.0  # a picture, not a flat fill


def test_interrupted_and_resumed_run_equals_uninterrupted(trained: dict, shapes: Path, tmp_path: Path) -> None:
    ckpt_dir, out = tmp_path / "ck", tmp_path / "resumed.npz"
    args = ["--data", str(shapes), *TRAIN_ARGS, "--checkpoint-dir", str(ckpt_dir), "--out", str(out)]
    # 1. Stop cleanly after one epoch (the time-boxing option).
    proc = run_cli([*args, "--stop-after-epochs", "1"])
    assert proc.returncode == 0 and "--resume" in proc.stdout, proc.stderr
    assert read_metadata(ckpt_dir / "last.npz")["epoch"] == 1 and not out.exists()
    # 2. Resume, and Ctrl-C it as soon as it has written epoch 2's checkpoint: it saves the
    #    state between two batches of epoch 3 (or 4) and exits with 130.
    first = (ckpt_dir / "last.npz").stat().st_mtime_ns
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_dream.py"), *args, "--resume"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while (ckpt_dir / "last.npz").stat().st_mtime_ns == first and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted; checkpoint saved" in stderr and "Traceback" not in stderr
    meta = read_metadata(ckpt_dir / "last.npz")
    assert (meta["epoch"], meta["batch"]) > (1, 0) and not out.exists()
    # 3. Resume to the end.
    proc = run_cli([*args, "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert val_accuracies(proc.stdout)[-1] == val_accuracies(trained["stdout"])[-1]

    resumed, _ = read_weights(out)
    reference, _ = read_weights(trained["out"])
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_allclose(resumed[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # Optimizer state (momentum buffers, step count) too.
    ck_resumed, _ = read_weights(ckpt_dir / "last.npz")
    ck_reference, _ = read_weights(trained["ckpt"])
    for key in ck_reference:
        if key.startswith("optimizer."):
            np.testing.assert_allclose(ck_resumed[key], ck_reference[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_googlenet_aux_heads_train_and_are_stripped(weights_dir: Path, tmp_path: Path) -> None:
    """GoogLeNet's aux classifiers are trained (loss weight 0.3) and left out of the dream file.

    Random-init GoogLeNet weights are written directly from the MLX model (what
    ``export_googlenet.py --random-init`` makes, without importing torch); one epoch of two
    uncompiled steps at 48 px keeps it quick.
    """
    base = models.build_model("googlenet")
    base_file = tmp_path / "googlenet_random.npz"
    save_weights(base_file, {k: np.array(v) for k, v in tree_flatten(base.parameters())},
                 {"architecture": "googlenet", "num_classes": 1000, "config": {}, "source": "random init"})
    data = scan_image_folder(make_shapes(tmp_path / "tiny", per_class=2, seed=1))
    config = TrainConfig(model="googlenet", weights=str(base_file), epochs=1, batch_size=4, image_size=48,
                         val_split=0.0, seed=0)
    run = prepare_run(config, data)
    assert run.use_aux and run.config.freeze_to == "inception3b"
    before = {k: np.array(v) for k, v in tree_flatten(run.model.parameters())}
    assert fit(run, tmp_path / "ck" / "last.npz", StopRequest(), quiet=True, compile=False, log=lambda _: None)
    after = {k: np.array(v) for k, v in tree_flatten(run.model.parameters())}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    frozen_prefixes = ("conv1.", "conv2.", "conv3.", "inception3a.", "inception3b.")
    assert not {k for k in changed if k.startswith(frozen_prefixes)}  # incl. BN running statistics
    assert any(k.startswith("aux1.") for k in changed) and any(k.startswith("aux2.") for k in changed)
    assert "fc.weight" in changed and any(k.startswith("inception4a.") and "running_mean" in k for k in changed)

    out = tmp_path / "g_ft.npz"
    export_dream_weights(run, out)
    arrays, meta = read_weights(out)
    assert not any(k.startswith(("aux1.", "aux2.")) for k in arrays) and "aux_logits" not in meta["config"]
    model = models.load_model(weights=out)
    assert model(mx.zeros((1, 48, 48, 3)))["logits"].shape == (1, 3)
    # Its checkpoint holds the aux heads (training state); as weights they are left out, as above.
    from_checkpoint = models.load_model(weights=tmp_path / "ck" / "last.npz")
    assert not hasattr(from_checkpoint, "aux1") and from_checkpoint.class_names == list(SHAPES)

    no_aux = prepare_run(TrainConfig(model="googlenet", weights=str(base_file), aux=False, epochs=1,
                                     batch_size=4, image_size=48, val_split=0.0), data)
    assert not no_aux.use_aux
    assert not any(k.startswith("aux") for k, _ in tree_flatten(no_aux.model.parameters()))


def test_adam_step_schedule_and_balanced_sampling(effnet: Path, tmp_path: Path) -> None:
    """The other optimiser/schedule/sampling options train, and the step schedule decays per epoch."""
    data = scan_image_folder(make_shapes(tmp_path / "tiny", per_class=3, seed=2))
    config = TrainConfig(model="efficientnet_lite0", optimizer="adam", schedule="step", step_epochs=1, epochs=2,
                         batch_size=4, image_size=32, val_split=0.0, balanced=True, freeze_to="block10")
    run = prepare_run(config, data)
    assert run.config.lr == 3e-4 and len(run.frozen) == 12  # stem + block0..block10
    before = np.array(run.model.fc.weight)
    assert fit(run, tmp_path / "ck" / "last.npz", StopRequest(), quiet=True, compile=False, log=lambda _: None)
    lrs = [h["lr"] for h in run.history]
    np.testing.assert_allclose(lrs, [3e-4, 3e-5], rtol=1e-5)  # x0.1 after each epoch
    assert not np.allclose(np.array(run.model.fc.weight), before)


# -- the data pipeline's determinism --------------------------------------------------------

def test_split_and_sampling() -> None:
    labels = [0] * 10 + [1] * 30 + [2] * 2
    train, val = stratified_split(labels, 0.2, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    val_counts = np.bincount(np.array(labels)[val], minlength=3)
    assert val_counts.tolist() == [2, 6, 1]  # stratified; a 2-image class still gives one to val
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)

    idx = np.arange(len(labels))
    plain = epoch_order(idx, labels, seed=0, epoch=1, balanced=False)
    assert sorted(plain) == list(idx)
    assert np.array_equal(plain, epoch_order(idx, labels, seed=0, epoch=1, balanced=False))
    assert not np.array_equal(plain, epoch_order(idx, labels, seed=0, epoch=2, balanced=False))
    draws = np.concatenate([epoch_order(idx, labels, seed=0, epoch=e, balanced=True) for e in range(50)])
    share = np.bincount(np.array(labels)[draws], minlength=3) / len(draws)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.03)  # balanced although 10/30/2

    filled = fill_batches(np.arange(10), 4)
    assert len(filled) == 12 and filled[10:].tolist() == [0, 1]


def test_augmentation_is_reproducible() -> None:
    img = draw_shape("circle", np.random.default_rng(0))
    a = train_view(img, 48, np.random.default_rng([1, 2, 3]))
    b = train_view(img, 48, np.random.default_rng([1, 2, 3]))
    c = train_view(img, 48, np.random.default_rng([1, 2, 4]))
    assert a.shape == (48, 48, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# -- bad input ------------------------------------------------------------------------------

def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_line_error(shapes: Path, effnet: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    base = ["--model", "efficientnet_lite0", "--image-size", "64", "--checkpoint-dir", str(tmp_path / "ck"),
            "--out", str(tmp_path / "o.npz"), "--quiet"]
    one_class = tmp_path / "one"
    make_shapes(one_class, 2, 0)
    for shape in SHAPES[1:]:
        for f in (one_class / shape).iterdir():
            f.unlink()
        (one_class / shape).rmdir()
    empty_class = tmp_path / "empty_class"
    make_shapes(empty_class, 2, 0)
    (empty_class / "nothing").mkdir()
    cases = [
        (["--data", str(tmp_path / "missing"), *base], "does not exist"),
        (["--data", str(one_class), *base], "need at least 2"),
        (["--data", str(empty_class), *base], "no images in"),
        (["--data", str(shapes), *base, "--freeze-to", "block44"], "unknown --freeze-to layer 'block44' for "
                                                                   "efficientnet_lite0. Did you mean 'block4'?"),
        (["--data", str(shapes), *base, "--model", "googlenett"], "unknown model 'googlenett'"),
        (["--data", str(shapes), *base, "--resume"], "no checkpoint"),
        (["--data", str(shapes), *base, "--lr", "-1"], "--lr must be positive"),
        (["--data", str(shapes), *base[:-3], "--out", str(tmp_path / "o.txt"), "--quiet"], "must end in .npz"),
        (["--data", str(shapes), *base, "--batch-size", "500"], "larger than the 57 training images"),
        (["--data", str(shapes), *base, "--weights", str(tmp_path / "nope.npz")], "not found"),
    ]
    for argv, message in cases:
        assert train_dream.main(argv) == 1, argv
        line = _error_line(capsys)
        assert message in line, (argv, line)
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "ck").exists()

    # GoogLeNet (the default model) without its exported weights: name the exporter and the offline model.
    monkeypatch.setenv("DEEPDREAM_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    assert train_dream.main(["--data", str(shapes), "--checkpoint-dir", str(tmp_path / "ck2"),
                             "--out", str(tmp_path / "g.npz"), "--quiet"]) == 1
    line = _error_line(capsys)
    assert "python export_googlenet.py" in line and "--model efficientnet_lite0" in line


def test_existing_checkpoint_needs_resume_and_resume_keeps_settings(trained: dict, shapes: Path, capsys) -> None:
    ck_dir = str(trained["ckpt"].parent)
    assert train_dream.main(["--data", str(shapes), *TRAIN_ARGS, "--checkpoint-dir", ck_dir]) == 1
    assert "--resume" in _error_line(capsys)
    assert train_dream.main(["--data", str(shapes), *TRAIN_ARGS, "--checkpoint-dir", ck_dir,
                             "--resume", "--lr", "0.5"]) == 1
    assert "--lr 0.5 differs from the checkpoint's 0.01" in _error_line(capsys)


def test_restart_starts_over_in_a_folder_that_holds_a_checkpoint(trained: dict, shapes: Path, tmp_path: Path,
                                                                capsys) -> None:
    ck = tmp_path / "ck"
    ck.mkdir()
    shutil.copy(trained["ckpt"], ck / "last.npz")  # 4 epochs done
    args = ["--data", str(shapes), *TRAIN_ARGS, "--epochs", "1", "--no-compile", "--checkpoint-dir", str(ck),
            "--out", str(tmp_path / "new.npz")]
    assert train_dream.main([*args, "--restart", "--resume"]) == 1
    assert "choose one" in _error_line(capsys)
    assert train_dream.main([*args, "--restart"]) == 0
    meta = read_metadata(ck / "last.npz")
    assert meta["epoch"] == 1 and meta["config"]["epochs"] == 1 and len(meta["history"]) == 1
    assert read_metadata(tmp_path / "new.npz")["training"]["epochs"] == 1


def test_a_checkpoint_is_a_weights_file(effnet: Path, shapes: Path, tmp_path: Path) -> None:
    """``--weights checkpoints/<run>/last.npz`` (dream.py, dream_video.py, train_dream.py): the model
    as the checkpoint holds it, with its classes and normalisation; fine-tuning continues from it."""
    checkpoint = make_checkpoint(tmp_path)
    model = models.load_model(weights=checkpoint)
    arrays, meta = read_weights(checkpoint)
    assert model.class_names == list(SHAPES) and model.std == (0.229, 0.224, 0.225)
    assert model.metadata["source"].startswith(f"training checkpoint {checkpoint} (after 1 epochs)")
    params = dict(tree_flatten(model.parameters()))
    assert params.keys() == {k[len("model."):] for k in arrays if k.startswith("model.")}
    assert all(np.array_equal(np.array(v), arrays["model." + k]) for k, v in params.items())

    out = tmp_path / "more.npz"
    proc = run_cli(["--data", str(shapes), "--weights", str(checkpoint), "--epochs", "1", "--batch-size", "16",
                    "--image-size", "64", "--no-compile", "--quiet", "--checkpoint-dir", str(tmp_path / "ck2"),
                    "--out", str(out)])
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert read_metadata(out)["source"].startswith(f"fine-tuned from {checkpoint}")


def test_cli_error_has_no_traceback(tmp_path: Path) -> None:
    proc = run_cli(["--data", str(tmp_path / "missing")], timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
