"""Reading any Pillow image as float RGB, writing dreams atomically, checking outputs early."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepdream.image_io import (
    ImageError,
    check_output_path,
    check_writable_folder,
    load_image,
    noise_image,
    save_image,
)


def test_exif_orientation_is_applied(tmp_path):
    # A 40 wide x 20 high picture stored with "rotate 90 CW to display" (orientation 6).
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    img.paste((10, 10, 200), (0, 0, 10, 20))  # blue strip on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    rgb = load_image(path)
    assert rgb.shape == (40, 20, 3)          # displayed upright: 20 wide, 40 high
    assert rgb[2, 10, 2] > 0.6               # the stored left edge is now at the top


def test_alpha_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))         # fully transparent black -> white
    img.putpixel((1, 0), (0, 0, 255, 128))     # half-transparent blue -> light blue
    path = tmp_path / "alpha.png"
    img.save(path)
    rgb = load_image(path)
    assert rgb.shape == (8, 8, 3)
    np.testing.assert_allclose(rgb[0, 0], [1, 1, 1])
    np.testing.assert_allclose(rgb[0, 1], [127 / 255, 127 / 255, 1], atol=0.01)
    np.testing.assert_allclose(rgb[4, 4], [1, 0, 0])


def test_greyscale_16bit_and_palette(tmp_path):
    grey = Image.new("L", (4, 3), 128)
    grey.save(tmp_path / "grey.png")
    rgb = load_image(tmp_path / "grey.png")
    assert rgb.shape == (3, 4, 3) and np.allclose(rgb, 128 / 255)

    data = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")
    rgb16 = load_image(tmp_path / "deep.png")
    np.testing.assert_allclose(rgb16[0, :, 0], [0, 32768 / 65535, 1], atol=1e-4)

    pal = Image.new("RGB", (4, 4), (0, 255, 0)).convert("P")
    pal.save(tmp_path / "pal.gif")
    np.testing.assert_allclose(load_image(tmp_path / "pal.gif")[1, 1], [0, 1, 0])


def test_16_bit_images_decode_by_one_rule_for_dreams_and_datasets(tmp_path):
    """16-bit data is scaled by 65535 whatever its brightest pixel: a dark 16-bit image stays dark
    (a rule keyed on the maximum would read values up to 255 as 8-bit and brighten it 257x)."""
    from deepdream.dataset import open_rgb

    data = np.array([[0, 200, 12850, 65535]], dtype=np.uint16)   # 12850 = 50 * 257
    Image.fromarray(data).save(tmp_path / "deep.png")
    dark = np.array([[0, 200, 255]], dtype=np.uint16)            # 16-bit, but nothing above 255
    Image.fromarray(dark).save(tmp_path / "dark.png")
    for name, values in (("deep.png", data), ("dark.png", dark)):
        dream_view = load_image(tmp_path / name)[0, :, 0]
        np.testing.assert_allclose(dream_view, values[0] / 65535, atol=1e-6)
        dataset_view = np.asarray(open_rgb(tmp_path / name))[0, :, 0]
        np.testing.assert_array_equal(dataset_view, np.round(values[0] / 65535 * 255).astype(np.uint8))
    assert np.asarray(open_rgb(tmp_path / "deep.png"))[0, 2, 0] == 50
    assert np.asarray(open_rgb(tmp_path / "dark.png")).max() == 1     # dark stays dark


def test_float_images_are_taken_as_0_to_1_unless_they_exceed_it(tmp_path):
    from deepdream.image_io import to_rgb

    unit = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32), "F")
    np.testing.assert_array_equal(np.asarray(to_rgb(unit))[0, :, 0], [0, 64, 255])
    wide = Image.fromarray(np.array([[0.0, 50.0, 200.0]], dtype=np.float32), "F")
    np.testing.assert_array_equal(np.asarray(to_rgb(wide))[0, :, 0], [0, 64, 255])


def test_max_size_downscales_longest_side(tmp_path):
    Image.new("RGB", (400, 100), (0, 0, 0)).save(tmp_path / "wide.png")
    assert load_image(tmp_path / "wide.png", max_size=100).shape == (25, 100, 3)
    assert load_image(tmp_path / "wide.png", max_size=1000).shape == (100, 400, 3)  # never upscales


@pytest.mark.parametrize("content,expected", [
    (None, "not found"),
    (b"", "is an empty file"),
    (b"this is not an image at all", "not an image"),
])
def test_unreadable_inputs_name_the_problem(tmp_path, content, expected):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=expected) as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_truncated_png_is_an_error(tmp_path):
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt|truncated|not an image"):
        load_image(tmp_path / "cut.png")


def test_save_is_atomic_and_round_trips(tmp_path):
    rgb = np.random.default_rng(0).random((10, 12, 3)).astype(np.float32)
    out = save_image(tmp_path / "sub" / "dream.png", rgb)
    back = load_image(out)
    assert np.abs(back - rgb).max() <= 0.5 / 255 + 1e-6
    assert sorted(os.listdir(tmp_path / "sub")) == ["dream.png"]  # no temporary left behind
    save_image(tmp_path / "dream.jpg", rgb)
    assert Image.open(tmp_path / "dream.jpg").format == "JPEG"


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def broken_write(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", broken_write)
    with pytest.raises(ImageError, match="No space left"):
        save_image(tmp_path / "dream.png", np.zeros((4, 4, 3), np.float32))
    assert os.listdir(tmp_path) == []


def test_output_checks(tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (4, 4)).save(src)
    with pytest.raises(ImageError, match="is the input image"):
        check_output_path(src, src)
    with pytest.raises(ImageError, match="is a folder"):
        check_output_path(tmp_path, src)
    with pytest.raises(ImageError, match="unknown image extension"):
        check_output_path(tmp_path / "out.xyz", src)
    with pytest.raises(ImageError, match="in the way"):
        check_output_path(src / "out.png")  # a file where a folder should be
    assert check_output_path(tmp_path / "new" / "out.png", src) == tmp_path / "new" / "out.png"
    check_writable_folder(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_noise_image_is_seeded_grey():
    a = noise_image(16, 24, np.random.default_rng(7))
    b = noise_image(16, 24, np.random.default_rng(7))
    assert a.shape == (16, 24, 3) and np.array_equal(a, b)
    assert 0.44 < a.mean() < 0.56 and a.min() >= 0.45 - 1e-6 and a.max() <= 0.55 + 1e-6


def test_a_video_is_told_apart_by_its_content(tmp_path):
    """A clip is a video whatever its name; a text file or an image named .mp4 is not. A video given
    as an image says where it goes instead."""
    from benchmarks.clips import photo_strip, write_clip
    from deepdream.image_io import is_video

    strip = photo_strip(64, 80)
    clip = write_clip(tmp_path / "clip.mp4", [np.ascontiguousarray(strip[:, i:i + 64]) for i in range(3)], audio=None)
    named_as_image = clip.rename(tmp_path / "clip.jpg")
    (tmp_path / "notes.mp4").write_text("not a video\n")
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    (tmp_path / "image.png").rename(tmp_path / "image.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert is_video(named_as_image)
    assert not any(is_video(tmp_path / name) for name in ("notes.mp4", "image.mp4", "empty.mp4"))
    with pytest.raises(ImageError, match=r"is a video, not an image; dream its frames with `python dream_video.py "
                                         r"--video .*clip\.jpg`"):
        load_image(named_as_image)
    with pytest.raises(ImageError, match="not an image format Pillow knows"):
        load_image(tmp_path / "notes.mp4")
    assert load_image(tmp_path / "image.mp4").shape == (32, 32, 3)
