"""Fine-tuning shows in renders: efficientnet_lite0 (real weights) fine-tuned by train_dream.py on
stripes that differ only in orientation, then each class rendered from noise by dream.py.

The two classes are horizontal and vertical stripes of random period, phase, colours and size, so
the only thing the new classifier can learn is orientation, and the frozen ImageNet stages already
see it. A render of "vertical" must then be made of more vertical structure than the render of
"horizontal": ``orientation_ratio`` (the luminance's spectral power near the x axis, i.e. change
along x, over that near the y axis) is several times larger for it. Both renders come from the
same run of dream.py with the same settings, so nothing but the class tells them apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dream
import models
import train_dream
from deepdream.sweep import item_filename
from tests.test_train_dream import make_image_folder

ORIENTATIONS = ("horizontal", "vertical")
#: The "vertical" render's orientation ratio over the "horizontal" one's, at least (docs/training.md
#: has the values over seeds). The contrast, not each ratio against 1: a render's own ratio also
#: carries the fine-tuned model's bias, which for some seeds puts both on one side of 1.
MIN_CONTRAST = 2.0
LUMA = np.array([0.299, 0.587, 0.114])
PER_CLASS = 40
#: Only the head (the last 1x1 convolution and the classifier) learns: the frozen ImageNet features
#: already tell orientations apart, so a few epochs suffice and the render is made of those features.
TRAIN_ARGS = ["--epochs", "8", "--lr", "0.05", "--freeze-to", "block15", "--batch-size", "16", "--image-size", "64",
              "--val-split", "0.25"]
RENDER_STEPS = 48


def draw_stripes(orientation: str, rng: np.random.Generator) -> Image.Image:
    """Stripes of random period, phase and colours on a random-sized square: only the orientation
    tells the classes apart."""
    size = int(rng.integers(64, 97))
    period = rng.uniform(6.0, 16.0)
    phase = rng.uniform(0.0, period)
    bg = rng.integers(0, 256, 3)
    fg = (bg + rng.integers(80, 176, 3)) % 256  # always clearly different from the background
    across = np.arange(size, dtype=np.float64)
    on = ((across + phase) % period) < period / 2
    mask = np.broadcast_to(on[None, :] if orientation == "vertical" else on[:, None], (size, size))
    return Image.fromarray(np.where(mask[..., None], fg, bg).astype(np.uint8))


def orientation_ratio(rgb: np.ndarray, half_angle: float = 22.5, top: float = 0.25) -> float:
    """Orientation energy: the luminance's spectral power whose frequency points within ``half_angle``
    degrees of the x axis (structure that changes along x: vertical stripes and edges) over the power
    within as much of the y axis, for frequencies up to ``top`` cycles per pixel. Above 1: vertical."""
    grey = np.asarray(rgb, np.float64)[..., :3] @ LUMA
    power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
    fy = np.fft.fftfreq(grey.shape[0])[:, None]
    fx = np.fft.fftfreq(grey.shape[1])[None, :]
    radius = np.hypot(fx, fy)
    angle = np.degrees(np.arctan2(np.abs(fy), np.abs(fx)))     # 0: along x, 90: along y
    band = (radius > 0) & (radius <= top)
    return float(power[band & (angle <= half_angle)].sum() / power[band & (angle >= 90 - half_angle)].sum())


def fine_tune_and_render(work: Path, seed: int) -> dict[str, Path]:
    """train_dream.py on the stripes, then dream.py --class all --sweep: each class's render."""
    data = make_image_folder(work / "stripes", ORIENTATIONS, draw_stripes, PER_CLASS, seed)
    weights = work / "stripes.npz"
    assert train_dream.main(["--data", str(data), "--model", "efficientnet_lite0", *TRAIN_ARGS, "--seed", str(seed),
                             "--checkpoint-dir", str(work / "ck"), "--out", str(weights), "--quiet"]) == 0
    out = work / "renders"
    assert dream.main(["--weights", str(weights), "--class", "all", "--sweep", "--output", str(out),
                       "--width", "64", "--height", "64", "--steps", str(RENDER_STEPS),
                       "--seed", str(seed), "--quiet"]) == 0
    return {name: out / item_filename(i, name) for i, name in enumerate(ORIENTATIONS)}


@pytest.fixture(scope="module")
def effnet(weights_dir: Path) -> None:
    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    models.load_model("efficientnet_lite0")


def test_renders_of_fine_tuned_classes_show_their_orientation(effnet, tmp_path: Path) -> None:
    renders = fine_tune_and_render(tmp_path, seed=0)
    ratios = {name: orientation_ratio(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255)
              for name, path in renders.items()}
    print("orientation ratio (spectral power near the x axis / near the y axis):",
          {k: round(v, 2) for k, v in ratios.items()})
    assert ratios["vertical"] >= MIN_CONTRAST * ratios["horizontal"], ratios


def write_assets(folder: Path, seed: int = 0) -> None:
    """The docs' pictures (docs/training.md): a training image of each class and the test's two renders,
    shown 3x larger (nearest neighbour, so the pixels stay the render's)."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as work:
        renders = fine_tune_and_render(Path(work), seed)
        for name, path in renders.items():
            with Image.open(path) as img:
                img.resize((img.width * 3, img.height * 3), Image.Resampling.NEAREST).save(folder / f"{name}_render.png")
                print(f"{name}: orientation ratio {orientation_ratio(np.asarray(img, np.float32) / 255):.2f}")
            draw_stripes(name, rng).resize((192, 192), Image.Resampling.NEAREST).save(folder / f"{name}_data.png")


if __name__ == "__main__":  # python -m tests.test_train_dream_renders: regenerate assets/training/
    write_assets(Path(__file__).resolve().parent.parent / "assets" / "training")
