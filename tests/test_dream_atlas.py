"""dream.py --atlas (and --sweep's page) in-process, as a person would check them: the page parsed by a
real HTML parser with every image and link on disk, each image's command remaking it, a rerun after
three deletions rendering those three, a fine-tuned model's own class names, and the page opened
in headless Chromium with every thumbnail drawn."""

from __future__ import annotations

import importlib.util
import io
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models
from deepdream.cli.args import still_parser
from deepdream.errors import exit_code
from deepdream.image_io import load_image
from deepdream.visualise import Renderer
from tests.pages import check_site, chromium_driver, read_page

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("dream_script", ROOT / "dream.py")
dream_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dream_script)

#: A tiny atlas: 2 layers x 4 channels and 3 classes, 32 px, 2 steps (plumbing, not pictures).
TINY = ["--model", "efficientnet_lite0", "--layers", "block3", "block1", "--channels", "0-3",
        "--class", "goldfish", "0", "jellyfish", "--width", "32", "--height", "32", "--steps", "2", "--seed", "3"]
IMAGES = 2 * 4 + 3


def dream_cli(*argv: object) -> int:
    return exit_code(lambda: dream_script.main([*map(str, argv)]))


@pytest.fixture(scope="module")
def effnet(weights_dir):
    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    return models.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def atlas(effnet, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("atlas") / "atlas"
    assert dream_cli("--atlas", *TINY, "--output", folder, "--quiet") == 0
    return folder


def index_of(folder: Path):
    return check_site(folder / "index.html")[(folder / "index.html").resolve()]


def test_page_names_every_image_in_network_order(atlas):
    pages = check_site(atlas / "index.html")          # every image, link and #anchor exists
    index = pages[(atlas / "index.html").resolve()]
    assert index.text("h1") == ["Atlas of efficientnet_lite0"]
    assert index.text("h2") == ["block1 24 channels, 4 shown", "block3 40 channels, 4 shown",
                                "classes 1,000 classes, 3 shown"]
    assert len(index.images) == IMAGES and len(pages) == 1 + IMAGES
    for img in index.images:
        assert img.get("loading") == "lazy" and img.get("width") == img.get("height") == "32"
    assert index.labels() == ["0", "1", "2", "3"] * 2 + ["goldfish", "tench", "jellyfish"]
    # The job's own command at the head of the page: the flags it was given (--quiet aside).
    command, = index.text("code")
    parse = still_parser().parse_args
    assert shlex.split(command)[:2] == ["python", "dream.py"]
    assert parse(shlex.split(command)[2:]) == parse(["--atlas", *TINY, "--output", str(atlas)])


@pytest.mark.parametrize("page", ["block3/0002_block3_2.html", "classes/0107_jellyfish.html"])
def test_each_images_command_remakes_it_byte_for_byte(atlas, tmp_path, monkeypatch, page):
    """The command on an image's page renders its batch again (a render is the same bytes only in a batch of
    the same size), and the page says so; the image comes out the same file, byte for byte."""
    picture = read_page(atlas / "index_files" / page)
    command = shlex.split(picture.text("code")[0])
    assert command[:2] == ["python", "dream.py"] and "--atlas" not in command and "--sweep" in command
    assert any("remakes the whole batch" in text for text in picture.text("p"))
    monkeypatch.chdir(tmp_path)
    assert dream_cli(*command[2:], "--quiet") == 0
    original = (picture.path.parent / picture.images[0].get("src")).resolve()
    made = tmp_path / command[command.index("--output") + 1] / original.name
    assert made.read_bytes() == original.read_bytes()


def test_rerun_after_deleting_three_writes_exactly_those_three(atlas, tmp_path, monkeypatch, capsys):
    """The batches holding them are rendered again (the extra compute docs/atlas.md states), and exactly the
    three files are written, the same bytes as before; no other image is touched."""
    folder = tmp_path / "atlas"
    shutil.copytree(atlas, folder)
    gone = [folder / "block1" / "0000_block1_0.png", folder / "block3" / "0003_block3_3.png",
            folder / "classes" / "0001_goldfish.png"]
    before = {p: p.read_bytes() for p in gone}
    images = [p for p in folder.glob("*/*.png")]
    stamps = {p: p.stat().st_mtime_ns for p in images if p not in gone}
    for path in gone:
        path.unlink()
    rendered = []
    original = Renderer.render

    def render(self, n, *args, **kwargs):
        if kwargs.get("steps") is None:       # not the estimate's probe
            rendered.append(n)
        return original(self, n, *args, **kwargs)
    monkeypatch.setattr(Renderer, "render", render)
    assert dream_cli("--atlas", *TINY, "--output", folder) == 0
    assert sorted(rendered) == [3, 4, 4]                     # the three batches that hold them
    assert {p: p.read_bytes() for p in gone} == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(folder.glob("*/*.png")) == sorted(images)
    err = capsys.readouterr().err
    assert "11 images in 3 sections (8 already in" in err and "3 to render (with the rest of their batches: " \
        "11 renders)" in err
    assert "images: 3 made, 8 skipped (already made), 0 failed" in err
    assert len(index_of(folder).images) == IMAGES


def test_a_rerun_with_other_settings_is_refused_in_one_line(atlas, tmp_path, capsys):
    folder = tmp_path / "atlas"
    shutil.copytree(atlas, folder)
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    wider = [*TINY, "--width", "40"]
    assert dream_cli("--atlas", *wider, "--output", folder, "--quiet") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: '") and \
        "was made with other settings (--width 32 -> 40); add --overwrite" in err, err
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps
    assert dream_cli("--atlas", *wider, "--output", folder, "--overwrite", "--quiet") == 0
    assert load_image(folder / "block1" / "0000_block1_0.png").shape == (32, 40, 3)


def test_fine_tuned_atlas_is_titled_with_its_own_classes(effnet, tmp_path, capsys):
    from models.weights import read_weights, save_weights

    arrays, meta = read_weights(models.default_weights_path("efficientnet_lite0"))
    arrays["fc.weight"], arrays["fc.bias"] = arrays["fc.weight"][:2], arrays["fc.bias"][:2]
    save_weights(tmp_path / "mine.npz", arrays, {**meta, "num_classes": 2, "class_names": ["stripes", "discs"]})
    out = tmp_path / "atlas"
    assert dream_cli("--weights", tmp_path / "mine.npz", "--class", "all", "--atlas", "--output", out,
                     "--width", "32", "--height", "32", "--steps", "2") == 0
    streams = capsys.readouterr()
    assert "atlas of efficientnet_lite0: 2 images in 1 section; 2 to render at 32x32 px, 2 steps each: about" \
        in streams.err
    assert streams.out.strip() == str(out / "index.html")
    index = index_of(out)
    assert index.text("h1") == ["Atlas of mine.npz (efficientnet_lite0)"]
    assert index.text("h2") == ["classes 2 classes"]
    assert index.labels() == ["stripes", "discs"]
    assert ("classes", "stripes, discs") in [tuple(td.text for td in tr) for tr in index.root.iter("tr")]
    assert sorted(p.name for p in (out / "classes").iterdir()) == ["0000_stripes.png", "0001_discs.png"]


def test_sweep_page_is_an_atlas_of_one_section(effnet, tmp_path):
    out = tmp_path / "sweep"
    assert dream_cli("--model", "efficientnet_lite0", "--layers", "block5", "--channels", "3", "7", "--sweep",
                     "--output", out, "--width", "32", "--height", "32", "--steps", "2", "--quiet") == 0
    index = index_of(out)
    assert index.text("h1") == ["Sweep of block5, efficientnet_lite0"]
    assert [img.get("alt") for img in index.images] == ["block5 channel 3", "block5 channel 7"]
    assert sorted(p.name for p in out.glob("*.png")) == ["0003_block5_3.png", "0007_block5_7.png",
                                                         "contact_sheet.png"]


@pytest.mark.parametrize("argv,message", [
    (["--atlas"], "--atlas writes one image per item: give a folder with --output"),
    (["--atlas", "--sweep", "--output", "a"], "--atlas renders every channel of --layers and every --class one by "
                                               "one; drop --sweep"),
    (["--atlas", "--neuron", "block3:1", "--output", "a"], "drop --neuron"),
    (["--atlas", "--layers", "block3", "--channels", "77", "--output", "a"], "none of --channels 77"),
    (["--atlas", "--channels", "0-3", "--output", "a"], "--channels needs --layers"),
    (["--atlas", "--class", "all", "--batch", "2", "--diversity", "5", "--output", "a"],
     "does not combine with --atlas"),
    (["--atlas", "--class", "all", "--save-every", "2", "--output", "a"], "--atlas writes each item as it finishes"),
    (["--class", "tiger", "cat"], "--class takes one class (got 2 words); quote a name with spaces"),
])
def test_bad_atlas_input_is_one_line_and_writes_nothing(effnet, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert dream_cli("--model", "efficientnet_lite0", *argv, "--quiet") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_headless_chromium_draws_every_thumbnail(atlas):
    """The page as a browser shows it, from disk with no server: every thumbnail loaded and drawn."""
    driver = chromium_driver()
    try:
        driver.get((atlas / "index.html").resolve().as_uri())
        # Lazy images load as they come into view: scroll through the page, then wait for them.
        height = driver.execute_script("return document.body.scrollHeight")
        for y in range(0, height + 800, 800):
            driver.execute_script(f"window.scrollTo(0, {y})")
        driver.execute_script("window.scrollTo(0, 0)")
        from selenium.webdriver.support.ui import WebDriverWait

        loaded = "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(loaded) == IMAGES)
        widths = driver.execute_script("return [...document.images].map(i => i.naturalWidth)")
        assert len(widths) == IMAGES and all(w > 0 for w in widths)
        boxes = driver.execute_script(
            "return [...document.images].map(i => { const r = i.getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })")
        ratio = driver.execute_script("return window.devicePixelRatio")
        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"), dtype=np.float32)
    finally:
        driver.quit()
    assert shot.std() > 10                                   # not a blank page
    drawn = 0
    for left, top, width, height in boxes:
        if top + height > shot.shape[0] / ratio:
            continue                                          # below the screenshot's fold
        cell = shot[int(top * ratio):int((top + height) * ratio), int(left * ratio):int((left + width) * ratio)]
        assert cell.size and cell.std() > 5, f"the thumbnail at {left},{top} is drawn blank"
        drawn += 1
    assert drawn == IMAGES


def test_the_committed_atlas_is_whole():
    """assets/atlas (the README's screenshot): every image and link its pages name is in the repository."""
    index = index_of(ROOT / "assets" / "atlas")
    assert index.text("h2") == ["block5 80 channels, 16 shown", "block10 112 channels, 16 shown",
                                "classes 1,000 classes, 8 shown"]
    assert len(index.images) == 40
    assert index.labels()[-8:] == ["goldfish", "flamingo", "jellyfish", "tarantula", "pizza", "strawberry",
                                   "lemon", "daisy"]
