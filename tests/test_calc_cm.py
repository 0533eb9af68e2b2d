"""calc_cm.py: the colour decorrelation matrix of a folder of images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import calc_cm
from deepdream.colour import load_colour_matrix, normalise

ROOT = Path(__file__).resolve().parent.parent

#: The pixel covariance the synthetic images are drawn with (RGB in [0, 1]): strongly
#: correlated channels, like photographs, with stds around 0.06-0.08.
A = np.array([[0.070, 0.000, 0.000],
              [0.050, 0.040, 0.000],
              [0.030, 0.020, 0.045]])
COVARIANCE = A @ A.T


def gaussian_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Pixels ~ N(mean, COVARIANCE) with a per-image mean far from the others'.

    Each image's mean differs by much more than the pixel spread, so a matrix made from the
    pooled (not per-image centred) covariance would fail the test. Sizes have a short side of
    256, so calc_cm's resize is the identity and the crop keeps the statistics exact.
    """
    w, h = size
    mean = rng.uniform(0.3, 0.7, 3)
    pixels = mean + rng.standard_normal((h * w, 3)) @ A.T
    assert pixels.min() > 0 and pixels.max() < 1  # no clipping bias
    return Image.fromarray(np.rint(pixels.reshape(h, w, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cm") / "images"
    rng = np.random.default_rng(1)
    for i, size in enumerate([(256, 288), (300, 256), (256, 256), (256, 320), (288, 256), (256, 260)]):
        d = root / ("cats" if i % 2 else "dogs")
        d.mkdir(parents=True, exist_ok=True)
        gaussian_image(rng, size).save(d / f"img{i}.png")
    return root


def test_matrix_square_root_equals_known_covariance(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cm.npy"
    assert calc_cm.main(["--data", str(folder), "--out", str(out), "--quiet"]) == 0
    matrix = load_colour_matrix(out)  # the file the dream engine reads
    assert matrix.shape == (3, 3)
    # Sampling error over 6 x 224^2 pixels is ~0.3%; 8-bit quantisation adds 1e-6 to the diagonal.
    # A matrix shrunk by a wrong divisor (dividing the covariance by an L0 count: ~17x) is far outside this.
    np.testing.assert_allclose(matrix @ matrix.T, COVARIANCE, atol=0.03 * COVARIANCE.max())
    assert np.all(matrix.sum(axis=0) >= 0)  # columns sign-canonical (luminance first)
    text = capsys.readouterr().out
    assert "from 6 image(s)" in text
    first_row = normalise(matrix)[0]
    assert f"{first_row[0]:+.6f}" in text  # the normalised form is printed too


def test_flat_folder_and_max_images(folder: Path, tmp_path: Path, capsys) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(folder.rglob("*.png")):
        (flat / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    out = tmp_path / "sub" / "cm.npy"  # the folder is created
    assert calc_cm.main(["--data", str(flat), "--out", str(out), "--max-images", "3", "--quiet"]) == 0
    assert "from 3 image(s)" in capsys.readouterr().out
    matrix = load_colour_matrix(out)
    np.testing.assert_allclose(matrix @ matrix.T, COVARIANCE, atol=0.05 * COVARIANCE.max())


def test_corrupt_images_are_skipped(folder: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sources = sorted(folder.rglob("*.png"))[:2]
    for path in sources:
        (data / path.name).write_bytes(path.read_bytes())
    (data / "broken.png").write_bytes(sources[0].read_bytes()[:500])  # a truncated PNG
    (data / "empty.png").write_bytes(b"")
    out = tmp_path / "cm.npy"
    assert calc_cm.main(["--data", str(data), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "skipped unreadable image" in captured.err and "broken.png" in captured.err
    assert f"skipped unreadable image {data / 'empty.png'}: empty file (0 bytes)" in captured.err
    assert "from 2 image(s)" in captured.out


@pytest.mark.parametrize("case", ["missing", "empty", "not_npy", "all_corrupt", "bad_max"])
def test_bad_input_is_one_line_error(case: str, tmp_path: Path, capsys) -> None:
    data, out = tmp_path / "data", tmp_path / "cm.npy"
    extra: list[str] = []
    if case != "missing":
        data.mkdir()
    if case == "all_corrupt":
        (data / "a.jpg").write_bytes(b"garbage")
    if case == "not_npy":
        out = tmp_path / "cm.txt"
        Image.new("RGB", (8, 8)).save(data / "a.png")
    if case == "bad_max":
        extra = ["--max-images", "0"]
    assert calc_cm.main(["--data", str(data), "--out", str(out), "--quiet", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not out.exists()


def test_cli_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "calc_cm.py"), "--data", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "cm.npy")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "does not exist" in proc.stderr


def test_without_out_the_matrix_goes_beside_the_weights(folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Not into the working directory: into the weights folder (DEEPDREAM_WEIGHTS_DIR, else weights/),
    named after the dataset, and the printed command dreams with it."""
    weights = tmp_path / "weights"
    monkeypatch.setenv("DEEPDREAM_WEIGHTS_DIR", str(weights))
    monkeypatch.chdir(tmp_path)
    assert calc_cm.main(["--data", str(folder), "--quiet"]) == 0
    out = weights / f"{folder.name}_colours.npy"
    assert out.is_file() and not (tmp_path / "colour_matrix.npy").exists()
    assert f"dream with: python dream.py --input PHOTO --decorrelate {out}" in capsys.readouterr().out
    load_colour_matrix(out)


def test_an_empty_matrix_file_is_one_line_error(tmp_path: Path) -> None:
    from deepdream.colour import ColourMatrixError

    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ColourMatrixError, match=r"is an empty file \(0 bytes\)"):
        load_colour_matrix(tmp_path / "empty.npy")
