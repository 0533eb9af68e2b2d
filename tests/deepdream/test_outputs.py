"""deepdream/outputs.py: the names of dreams, the record every image carries, and the rule for an
output that exists (the same settings: skipped; others: refused; a snapshot: made again)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepdream.image_io import read_image_record, save_image
from deepdream.outputs import State, dream_output, output_state, record_differences

RECORD = {"version": 1, "model": "efficientnet_lite0", "dream": {"steps": 10, "layers": ["block10"]}, "seed": 3}
GREY = np.full((8, 8, 3), 0.5, np.float32)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tiff"])
def test_an_image_carries_its_record(tmp_path: Path, ext: str) -> None:
    path = save_image(tmp_path / f"dream{ext}", GREY, RECORD)
    assert read_image_record(path) == RECORD
    assert read_image_record(save_image(tmp_path / f"plain{ext}", GREY)) is None


def test_the_rule_for_an_existing_output(tmp_path: Path) -> None:
    path = tmp_path / "dream.png"
    assert output_state(path, RECORD, seed_given=True) == (State.MISSING, [])
    save_image(path, GREY, RECORD)
    assert output_state(path, RECORD, seed_given=True) == (State.SAME, [])
    other = {**RECORD, "dream": {"steps": 5, "layers": ["block10"]}, "seed": 4}
    assert output_state(path, other, seed_given=True) == (State.OTHER, ["--steps 10 -> 5", "--seed 3 -> 4"])
    assert output_state(path, {**RECORD, "seed": 4}, seed_given=False) == (State.SAME, [])  # no --seed: any seed
    save_image(path, GREY, {**RECORD, "partial": True})
    assert output_state(path, RECORD, seed_given=True)[0] is State.PARTIAL
    save_image(tmp_path / "theirs.bmp", GREY)
    assert output_state(tmp_path / "theirs.bmp", RECORD, seed_given=True)[0] is State.OTHER
    assert record_differences({"input": {"file": "a.png", "sha256": "x"}}, {"input": {"file": "b.png", "sha256": "y"}}) \
        == ["the input file=a.png -> file=b.png"]


def test_default_names_do_not_collide_between_presets() -> None:
    lite0 = "efficientnet_lite0"
    assert dream_output("outputs", "in/chelsea.png", lite0, None, lite0) == Path("outputs/chelsea_efficientnet_lite0.png")
    # The model's own recipe is the default dream; another preset gets its own name.
    assert dream_output("outputs", "chelsea.png", lite0, lite0, lite0).name == "chelsea_efficientnet_lite0.png"
    assert dream_output("outputs", "chelsea.png", lite0, "efficientnet_lite0_natural", lite0).name == \
        "chelsea_efficientnet_lite0_natural.png"
    assert dream_output("o", "cat.jpg", "googlenet", "vgg16", "googlenet").name == "cat_googlenet_vgg16.jpg"
    assert dream_output("o", None, "mine", None, "googlenet").name == "dream_mine.png"
    assert dream_output("o", "anim.gif", "vgg16", None, "vgg16").name == "anim_vgg16.png"  # no room for a record
    assert dream_output("outputs", "photos/cat.jpg", "googlenet", None, "googlenet") == Path("outputs/cat_googlenet.jpg")
    assert dream_output("outputs", "scan.tiff", "vgg16", None, "vgg16") == Path("outputs/scan_vgg16.tiff")
