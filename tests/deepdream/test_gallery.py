"""The gallery page of a job's pictures: parsed as a browser parses it, every image and link on disk,
light thumbnails, one page per picture with its command, inputs beside their dreams, videos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from deepdream.gallery import THUMB_SIZE, Gallery, Picture, Section, write_gallery
from tests.pages import check_site, chromium_driver, read_page


def image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def grid(tmp_path: Path) -> Gallery:
    job = tmp_path / "job"
    first = [Picture(str(c), image(job / "block5" / f"{c:04d}_block5_{c}.png", 200, 160, c), f"block5 channel {c}",
                     f"python dream.py --layers block5 --channels {c}", (("layer", "block5"),)) for c in range(3)]
    second = [Picture("goldfish & <co>", image(job / "classes" / "0001_goldfish.png", 64, 64), "goldfish & <co>",
                      "python dream.py --class 1")]
    return Gallery("Atlas of <test>", (Section("block5", tuple(first), "40 channels, 3 shown"),
                                       Section("classes", tuple(second), "1,000 classes")),
                   details=(("model", "efficientnet_lite0"),), command="python dream.py --atlas")


def test_page_links_thumbnails_and_picture_pages(tmp_path):
    page_path = write_gallery(grid(tmp_path), tmp_path / "job")
    assert page_path == tmp_path / "job" / "index.html"
    pages = check_site(page_path)               # every image, link and #anchor exists
    index = pages[page_path.resolve()]
    assert len(pages) == 1 + 4                  # the index and one page per picture
    # Text is escaped, never markup: the label reads back as written.
    assert index.text("h1") == ["Atlas of <test>"]
    assert "goldfish & <co>" in [a.text for a in index.links]
    assert not list(index.root.iter("script"))
    # Thumbnails: small JPEGs, lazily loaded, laid out before they load (their size in the tag).
    thumbs = index.images
    assert len(thumbs) == 4
    for img in thumbs:
        assert img.get("loading") == "lazy"
        path = page_path.parent / img.get("src")
        with Image.open(path) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= THUMB_SIZE
            assert (int(img.get("width")), int(img.get("height"))) == thumb.size
    assert [s.get("id") for s in index.root.iter("section")] == ["block5", "classes"]
    assert "40 channels, 3 shown" in index.text("h2")[0]
    # A picture's page: the image at full size, its details, the command that remakes it, its neighbours.
    picture = pages[(page_path.parent / "index_files" / "block5" / "0001_block5_1.html").resolve()]
    full = picture.images[0]
    assert (full.get("width"), full.get("height")) == ("200", "160")
    assert (picture.path.parent / full.get("src")).resolve() == (tmp_path / "job" / "block5" / "0001_block5_1.png")
    assert picture.text("code") == ["python dream.py --layers block5 --channels 1"]
    rels = {a.get("rel"): a.get("href") for a in picture.links if a.get("rel")}
    assert rels == {"prev": "0000_block5_0.html", "next": "0002_block5_2.html"}


def test_rewrite_keeps_unchanged_files_and_remakes_stale_thumbnails(tmp_path):
    gallery = grid(tmp_path)
    page_path = write_gallery(gallery, tmp_path / "job")
    files = page_path.parent / "index_files"
    thumb = files / "thumbs" / "block5" / "0000_block5_0.jpg"
    other = files / "thumbs" / "block5" / "0001_block5_1.jpg"
    stamps = {p: p.stat().st_mtime_ns for p in (page_path, thumb, other)}
    # A picture made again (newer than its thumbnail) gets a new thumbnail; nothing else is touched.
    remade = image(tmp_path / "job" / "block5" / "0000_block5_0.png", 200, 160, seed=99)
    later = thumb.stat().st_mtime_ns + 10**9
    os.utime(remade, ns=(later, later))
    write_gallery(gallery, tmp_path / "job")
    assert thumb.stat().st_mtime_ns > stamps[thumb]
    assert other.stat().st_mtime_ns == stamps[other]
    assert page_path.stat().st_mtime_ns == stamps[page_path]


def test_missing_pictures_are_left_out(tmp_path):
    """An interrupted job's page shows what exists; a section with nothing yet says so."""
    gallery = grid(tmp_path)
    (tmp_path / "job" / "block5" / "0002_block5_2.png").unlink()
    (tmp_path / "job" / "classes" / "0001_goldfish.png").unlink()
    index = check_site(write_gallery(gallery, tmp_path / "job"))[(tmp_path / "job" / "index.html").resolve()]
    assert len(index.images) == 2
    assert any("nothing here yet" in "".join(p.itertext()) for p in index.root.iter("p"))


def test_inputs_beside_their_dreams(tmp_path):
    """A row per input (a batch, --model all): the input first, then its dreams with their commands;
    inputs outside the folder, even two of the same name, each get their own thumbnail."""
    rows = []
    for n, where in enumerate(("a", "b")):
        source = Picture("input", image(tmp_path / where / "photo.jpg", 90, 60, n))
        dreams = tuple(Picture(m, image(tmp_path / "out" / f"photo{n}_{m}.jpg", 90, 60, 10 + i), command=f"cmd {m} {n}")
                       for i, m in enumerate(("googlenet", "vgg16")))
        rows.append(Section(f"{where}/photo.jpg", dreams, source=source))
    page_path = write_gallery(Gallery("inputs", tuple(rows), inline_commands=True), tmp_path / "out")
    index = check_site(page_path)[page_path.resolve()]
    sections = list(index.root.iter("section"))
    for section, where in zip(sections, ("a", "b")):
        cells = [li for li in section.iter("li")]
        assert [c.get("class") for c in cells] == ["source", "", ""]
        target = (page_path.parent / cells[0].find("a").get("href")).resolve()
        assert read_page(target).images[0].get("src").endswith(f"{where}/photo.jpg")
    assert len({img.get("src") for img in index.images}) == 6
    assert "cmd vgg16 1" in index.text("code")


def test_video_poster_and_player(tmp_path):
    poster = image(tmp_path / "clip_frames" / "00002.png", 80, 48)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    gif = tmp_path / "loop.gif"
    Image.new("RGB", (80, 48)).save(gif)
    pictures = (Picture("clip.mp4", poster, command="python dream_video.py ...", video=video),
                Picture("loop.gif", poster, video=gif))
    page_path = write_gallery(Gallery("clip", (Section("clip", pictures),)), tmp_path, name="clip")
    assert page_path == tmp_path / "clip.html"
    index = check_site(page_path)[page_path.resolve()]
    player = next(index.root.iter("video"))
    assert player.get("controls") is not None and player.get("poster")
    assert (tmp_path / player.get("poster")).is_file()
    assert [s.get("src") for s in index.sources] == ["clip.mp4"]
    assert "loop.gif" in [img.get("src") for img in index.images]


def test_a_page_of_thousands_lays_out_at_once_and_loads_only_what_is_in_view(tmp_path):
    """Every thumbnail's box is known before it loads (width and height in the tag), and the browser
    fetches only the thumbnails in view: a page of thousands opens as fast as a page of a few."""
    job = tmp_path / "job"
    pictures = tuple(Picture(str(i), image(job / "many" / f"{i:04d}.png", 8, 8, i)) for i in range(2000))
    page_path = write_gallery(Gallery("many", (Section("many", pictures),)), job)
    driver = chromium_driver()
    try:
        driver.get(page_path.resolve().as_uri())
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
        count, loaded, boxed = driver.execute_script(
            "const im = [...document.images];"
            "return [im.length, im.filter(i => i.complete && i.naturalWidth > 0).length,"
            " im.filter(i => { const r = i.getBoundingClientRect(); return r.width == 8 && r.height == 8; }).length];")
    finally:
        driver.quit()
    assert count == 2000
    assert 0 < loaded < 1000                 # the ones in (and near) view, not the whole page
    assert boxed == 2000                     # every one laid out at its size, loaded or not
