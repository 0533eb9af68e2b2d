"""dream.py with many inputs (files, a folder, a quoted glob; --model all), and the one rule for outputs
that exist: resume, --overwrite, other settings refused, presets' own names, Ctrl-C saying what was
kept. On efficientnet_lite0's real weights, at a few dozen pixels and steps (plumbing, not looks).
Several ranks: tests/test_dream_ranks.py."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from PIL import Image

import dream
from deepdream.errors import exit_code
from deepdream.image_io import load_image, read_image_record
from tests.pages import check_site

ROOT = Path(__file__).resolve().parent.parent
CHELSEA = ROOT / "assets" / "chelsea.png"
COFFEE = ROOT / "assets" / "coffee.png"
TINY = ["--model", "efficientnet_lite0", "--layers", "block5", "--octaves", "1", "--steps", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def lite0(weights_dir: Path) -> Path:
    from convert import make_default_weights

    return make_default_weights("efficientnet_lite0")


def photos(folder: Path) -> Path:
    """Three photos of mixed sizes and a corrupt one."""
    folder.mkdir()
    Image.open(CHELSEA).convert("RGB").resize((96, 64)).save(folder / "cat.png")
    Image.open(CHELSEA).convert("RGB").resize((64, 80)).save(folder / "tall.jpg", quality=90)
    Image.open(COFFEE).convert("RGB").resize((72, 72)).save(folder / "coffee.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (folder / "notes.txt").write_text("not an image: left out of the folder")
    return folder


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = exit_code(lambda: dream.main([str(a) for a in argv]))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_folder_is_dreamed_a_bad_file_fails_alone_and_a_rerun_makes_only_what_is_missing(
        lite0, tmp_path: Path, capsys) -> None:
    src, out = photos(tmp_path / "photos"), tmp_path / "out"
    code, stdout, stderr = run(["--input", src, "--output", out, *TINY], capsys)
    made = ["cat_efficientnet_lite0.png", "coffee_efficientnet_lite0.png", "tall_efficientnet_lite0.jpg"]
    assert code == 1 and sorted(p.name for p in out.iterdir()) == sorted([*made, "index.html", "index_files"])  # none of
    # the broken one; the page shows each input beside its dream, and names the failure
    page = check_site(out / "index.html")[(out / "index.html").resolve()]
    assert page.text("h2") == ["cat.png 1 dream", "coffee.png 1 dream", "tall.jpg 1 dream"]
    assert [li.get("class") for li in page.cells()] == ["source", ""] * 3
    assert any(text.startswith(f"failed: {src / 'broken.png'}: cannot read input image") for text in page.text("p"))
    assert "dreams: 3 made, 0 skipped (already made), 1 failed" in stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == "error: 1 of 4 dreams failed (listed above); fix or remove the inputs named and run the same " \
                        "command to make them"
    assert any(line.startswith(f"failed: cannot read input image '{src / 'broken.png'}'") for line in lines)
    assert sorted(Path(line).name for line in stdout.split()) == sorted([*made, "index.html"])
    assert load_image(out / "cat_efficientnet_lite0.png").shape == (64, 96, 3)

    (src / "broken.png").unlink()
    (out / "coffee_efficientnet_lite0.png").unlink()
    before = {name: os.stat(out / name).st_mtime_ns for name in made if (out / name).exists()}
    code, stdout, stderr = run(["--input", src, "--output", out, *TINY], capsys)
    assert code == 0 and "dreams: 1 made, 2 skipped (already made), 0 failed" in stderr
    assert stdout.split() == [str(out / "coffee_efficientnet_lite0.png"), str(out / "index.html")]
    assert all(os.stat(out / name).st_mtime_ns == t for name, t in before.items())

    # Other settings: refused in one line before any work, unless --overwrite.
    code, _, stderr = run(["--input", src, "--output", out, *TINY, "--steps", "3"], capsys)
    assert code == 1 and stderr.count("\n") == 1
    assert "was made with other settings (--steps 2 -> 3); add --overwrite" in stderr
    code, _, stderr = run(["--input", src, "--output", out, *TINY, "--steps", "3", "--overwrite"], capsys)
    assert code == 0 and "dreams: 3 made, 0 skipped" in stderr
    assert read_image_record(out / "cat_efficientnet_lite0.png")["dream"]["steps"] == 3


def test_files_a_glob_and_model_all_give_each_input_its_sheet(lite0, tmp_path: Path, capsys) -> None:
    src, out = photos(tmp_path / "photos"), tmp_path / "all"
    (src / "broken.png").unlink()
    code, _, stderr = run(["--input", f"{src}/c*.png", src / "tall.jpg", "--model", "all", "--output", out,
                           "--octaves", "1", "--steps", "1", "--seed", "0"], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "cat_contact_sheet.png", "cat_efficientnet_lite0.png", "coffee_contact_sheet.png",
        "coffee_efficientnet_lite0.png", "index.html", "index_files", "tall_contact_sheet.png",
        "tall_efficientnet_lite0.jpg"]
    # The page: each input beside its dreams; each dream's command makes that file alone, byte for byte.
    page = check_site(out / "index.html")[(out / "index.html").resolve()]
    assert page.text("h1") == ["3 inputs, every model's dream"]
    commands = page.text("code")[1:]       # after the job's own
    assert len(commands) == 3
    words = shlex.split(commands[2])
    assert words[words.index("--input") + 1] == str(src / "tall.jpg") and "--model" in words
    made = Path(words[words.index("--output") + 1])
    before = made.read_bytes()
    made.unlink()
    assert run([*words[2:], "--quiet"], capsys)[0] == 0 and made.read_bytes() == before
    with Image.open(out / "tall_contact_sheet.png") as sheet:
        assert sheet.width > 2 * 256  # the input and the dream side by side
    code, _, stderr = run(["--input", f"{src}/nothing*.png", "--output", out, *TINY], capsys)
    assert code == 1 and "error: --input" in stderr and "matches no file" in stderr


def test_a_preset_run_does_not_write_over_the_default_dream(lite0, tmp_path: Path, capsys, monkeypatch) -> None:
    """Issue: `--preset efficientnet_lite0_natural` wrote over outputs/chelsea_efficientnet_lite0.png."""
    monkeypatch.chdir(tmp_path)
    quick = ["--input", CHELSEA, "--max-size", "64", "--octaves", "1", "--steps", "1", "--seed", "0", "--quiet"]
    assert run([*quick, "--model", "efficientnet_lite0"], capsys)[0] == 0
    default = tmp_path / "outputs" / "chelsea_efficientnet_lite0.png"
    first = default.read_bytes()
    assert run([*quick, "--preset", "efficientnet_lite0_natural"], capsys)[0] == 0
    assert default.read_bytes() == first
    natural = tmp_path / "outputs" / "chelsea_efficientnet_lite0_natural.png"
    assert read_image_record(natural)["dream"]["decorrelate"] == "imagenet"
    # The model's own recipe is the default dream: the same name, made already.
    code, _, stderr = run([*quick[:-1], "--preset", "efficientnet_lite0"], capsys)
    assert code == 0 and "already made with these settings" in stderr and default.read_bytes() == first


def test_a_sweep_rerun_with_another_width_is_refused(lite0, tmp_path: Path, capsys) -> None:
    """Issue: a --sweep rerun with another --width reused the old images and exited 0."""
    sweep = ["--model", "efficientnet_lite0", "--layers", "block3", "--channels", "0-1", "--sweep", "--steps", "2",
             "--height", "64", "--seed", "0", "--output", tmp_path, "--quiet"]
    assert run([*sweep, "--width", "64"], capsys)[0] == 0
    code, _, stderr = run([*sweep, "--width", "72"], capsys)
    assert code == 1 and stderr.count("\n") == 1 and "(--width 64 -> 72); add --overwrite" in stderr
    assert run([*sweep, "--width", "72", "--overwrite"], capsys)[0] == 0
    with Image.open(tmp_path / "0000_block3_0.png") as item:
        assert item.size == (72, 64)


def test_an_interrupt_after_items_were_written_says_what_was_kept(lite0, tmp_path: Path, capsys, monkeypatch) -> None:
    """Issue: Ctrl-C landing just after a batch was saved said "nothing was written"."""
    import deepdream.image_io as image_io

    real, saved = image_io.atomic_write, []

    def save_then_interrupt(path, write, **kwargs):
        real(path, write, **kwargs)
        saved.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(image_io, "atomic_write", save_then_interrupt)
    code, _, stderr = run(["--model", "efficientnet_lite0", "--layers", "block3", "--channels", "0-2", "--sweep",
                           "--batch", "1", "--steps", "2", "--width", "64", "--height", "64", "--output", tmp_path,
                           "--quiet"], capsys)
    assert code == 130 and len(saved) == 1
    assert stderr.strip() == f"error: 1 of 3 items are in {tmp_path}; run the same command to continue"
