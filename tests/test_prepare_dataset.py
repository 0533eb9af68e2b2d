"""prepare_dataset.py: counts, corrupt files, exact/near duplicates, quarantine, resizing, mean/std;
and the image decoding it shares with training (deepdream.dataset)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import prepare_dataset
from deepdream.dataset import open_rgb, scan_image_folder, to_rgb

ROOT = Path(__file__).resolve().parent.parent


def noise(seed: int, size: int = 256) -> np.ndarray:
    """Smooth-ish random images: distinct perceptual hashes, and a short side of 256 so the
    statistics view (resize to 256, centre crop 224) is an exact crop the test can repeat."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "apples").mkdir(parents=True)
    (root / "pears").mkdir()
    for i in range(4):
        Image.fromarray(noise(i)).save(root / "apples" / f"img{i}.png")
    for i in range(3):
        Image.fromarray(noise(10 + i)).save(root / "pears" / f"img{i}.png")
    # Exact duplicate, in the other class (a label conflict the report flags).
    (root / "pears" / "copy.png").write_bytes((root / "apples" / "img0.png").read_bytes())
    # Near duplicate: a smaller JPEG of apples/img3; the larger original is the one kept.
    Image.fromarray(noise(3)).resize((128, 128)).save(root / "apples" / "img3_small.jpg", quality=90)
    # Corrupt: a truncated PNG and a non-image with an image extension.
    data = (root / "apples" / "img1.png").read_bytes()
    (root / "apples" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "pears" / "fake.jpg").write_bytes(b"this is not a JPEG")
    (root / "pears" / "notes.txt").write_text("ignored")
    return root


KEPT = ["apples/img0.png", "apples/img1.png", "apples/img2.png", "apples/img3.png",
        "pears/img0.png", "pears/img1.png", "pears/img2.png"]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_report_only_finds_problems_and_changes_nothing(dataset: Path, tmp_path: Path, capsys) -> None:
    before = snapshot(dataset)
    stats_file = tmp_path / "stats.json"
    assert prepare_dataset.main(["--data", str(dataset), "--quiet", "--stats-out", str(stats_file)]) == 0
    assert snapshot(dataset) == before
    assert not (tmp_path / "data_quarantine").exists()
    out = capsys.readouterr().out
    assert "nothing was moved" in out and "--apply" in out
    assert "(in another class!)" in out
    report = json.loads(stats_file.read_text())
    assert report["classes"] == {"apples": 6, "pears": 5}
    assert report["kept"] == {"apples": 4, "pears": 3}
    assert sorted(c["path"] for c in report["corrupt"]) == ["apples/truncated.png", "pears/fake.jpg"]
    assert report["duplicates"] == [{"path": "pears/copy.png", "same_as": "apples/img0.png"}]
    assert [(n["path"], n["like"]) for n in report["near_duplicates"]] == [("apples/img3_small.jpg", "apples/img3.png")]

    # mean/std: every pixel of the kept images' 224 centre crops, computed here independently.
    pixels = np.concatenate([np.asarray(Image.open(dataset / k).convert("RGB"), np.float64)[16:240, 16:240]
                             .reshape(-1, 3) / 255 for k in KEPT])
    np.testing.assert_allclose(report["mean"], pixels.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(report["std"], pixels.std(axis=0), atol=1e-6)


def test_apply_moves_problems_to_quarantine_never_deletes(dataset: Path, tmp_path: Path, capsys) -> None:
    before = snapshot(dataset)
    quarantine = tmp_path / "q"
    assert prepare_dataset.main(["--data", str(dataset), "--quiet", "--apply", "--quarantine", str(quarantine)]) == 0
    after = snapshot(dataset)
    assert sorted(p for p in after if not p.endswith(".txt")) == KEPT
    moved = snapshot(quarantine)
    expected = {"corrupt/apples/truncated.png": "apples/truncated.png", "corrupt/pears/fake.jpg": "pears/fake.jpg",
                "duplicate/pears/copy.png": "pears/copy.png",
                "near_duplicate/apples/img3_small.jpg": "apples/img3_small.jpg"}
    for dest, src in expected.items():
        assert moved[dest] == before[src]  # the very same bytes, only moved
    log = [json.loads(line) for line in (quarantine / "moves.jsonl").read_text().splitlines()]
    assert {entry["reason"] for entry in log} == {"corrupt", "duplicate", "near_duplicate"} and len(log) == 4
    capsys.readouterr()
    assert prepare_dataset.main(["--data", str(dataset), "--quiet"]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_resize_to_writes_smaller_copies_of_kept_images(dataset: Path, tmp_path: Path) -> None:
    before = snapshot(dataset)
    out = tmp_path / "small"
    assert prepare_dataset.main(["--data", str(dataset), "--quiet", "--resize-to", str(out), "--short-side", "100"]) == 0
    assert snapshot(dataset) == before
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == KEPT
    for rel in written:
        with Image.open(out / rel) as img:
            assert min(img.size) == 100 and img.mode == "RGB"
    # Never enlarged: a short side above the images' keeps their size.
    big = tmp_path / "big"
    assert prepare_dataset.main(["--data", str(dataset), "--quiet", "--resize-to", str(big), "--short-side", "400"]) == 0
    with Image.open(big / KEPT[0]) as img:
        assert img.size == (256, 256)


def test_near_duplicates_can_be_disabled(dataset: Path, tmp_path: Path) -> None:
    stats_file = tmp_path / "s.json"
    assert prepare_dataset.main(["--data", str(dataset), "--quiet", "--near-threshold", "-1",
                                 "--stats-out", str(stats_file)]) == 0
    report = json.loads(stats_file.read_text())
    assert report["near_duplicates"] == [] and len(report["duplicates"]) == 1


@pytest.mark.parametrize("case", ["missing", "empty", "file", "quarantine_inside", "resize_inside"])
def test_bad_input_is_one_line_error(case: str, dataset: Path, tmp_path: Path, capsys) -> None:
    args = ["--data", str(dataset), "--quiet"]
    if case == "missing":
        args = ["--data", str(tmp_path / "nope")]
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        args = ["--data", str(tmp_path / "empty")]
    elif case == "file":
        args = ["--data", str(dataset / "apples" / "img0.png")]
    elif case == "quarantine_inside":
        args += ["--apply", "--quarantine", str(dataset / "bad")]
    else:
        args += ["--resize-to", str(dataset / "apples" / "small")]
    before = snapshot(dataset)
    assert prepare_dataset.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert snapshot(dataset) == before


def test_cli_subprocess(dataset: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "prepare_dataset.py"), "--data", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "does not exist" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "prepare_dataset.py"), "--data", str(dataset), "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "exact duplicates: 1" in proc.stdout


# -- decoding shared with training ---------------------------------------------------------

def test_to_rgb_handles_16_bit_alpha_palette_and_exif(tmp_path: Path) -> None:
    grey16 = Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16))
    assert grey16.mode.startswith("I;16")
    assert np.asarray(to_rgb(grey16))[0, 0].tolist() == [127, 127, 127]  # scaled, not clipped to 255
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30] + [0] * 765)
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [10, 20, 30]
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): stored 20x10, shown 10x20.
    img = Image.new("RGB", (20, 10), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert open_rgb(tmp_path / "rot.jpg").size == (10, 20)


def test_scan_image_folder_errors(tmp_path: Path) -> None:
    from deepdream.dataset import DatasetError

    root = tmp_path / "d"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "loose.png")
    with pytest.raises(DatasetError, match="no class folders"):
        scan_image_folder(root)
    (root / "a").mkdir()
    (root / "b").mkdir()
    Image.new("RGB", (8, 8)).save(root / "a" / "x.png")
    with pytest.raises(DatasetError, match="no images in .*: b"):
        scan_image_folder(root)
    data = scan_image_folder(root, allow_empty_classes=True)
    assert data.classes == ("a", "b") and data.counts() == {"a": 1, "b": 0}
