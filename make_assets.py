#!/usr/bin/env python
"""Remake the demo dreams in assets/dreams/ and the sample atlas (efficientnet_lite0, real weights, offline).

    python make_assets.py            # all demos (minutes on a CPU; README says how long)
    python make_assets.py --list     # the equivalent dream.py command of each demo
    python make_assets.py --only atlas    # assets/atlas/ (dream.py --atlas) and its page's screenshot

Each demo is written as the dream.py arguments that produce it, resolved by the same code
dream.py uses (deepdream.cli), so running the printed command gives the same image.
The model is loaded once and its compiled steps are reused across demos.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402,F401  (fast BLAS before anything imports mlx)
from deepdream.errors import run_main  # noqa: E402

OUT = Path("assets/dreams")
MODEL = ["--model", "efficientnet_lite0", "--seed", "0"]

#: name -> dream.py arguments (paths relative to the repository root)
DEMOS: dict[str, list[str]] = {
    "chelsea_efficientnet_lite0.jpg": ["--input", "assets/chelsea.png", "--preset", "efficientnet_lite0"],
    "chelsea_natural.jpg": ["--input", "assets/chelsea.png", "--preset", "efficientnet_lite0_natural"],
    "coffee_efficientnet_lite0.jpg": ["--input", "assets/coffee.png", "--preset", "efficientnet_lite0"],
    "coffee_natural.jpg": ["--input", "assets/coffee.png", "--preset", "efficientnet_lite0_natural"],
    "chelsea_guided_by_coffee.jpg": ["--input", "assets/chelsea.png", "--preset", "efficientnet_lite0",
                                     "--layers", "block10", "--guide", "assets/coffee.png"],
    "chelsea_lap_norm.jpg": ["--input", "assets/chelsea.png", "--preset", "efficientnet_lite0", "--lap-norm"],
    "noise_efficientnet_lite0.jpg": ["--width", "450", "--height", "300", "--preset", "efficientnet_lite0",
                                     "--steps", "20"],
}
#: The layer sheet: one dream per layer, same settings otherwise.
SHEET_LAYERS = ["block3", "block5", "block7", "block9", "block10", "block12", "block14"]
SHEET_ARGS = ["--input", "assets/chelsea.png", "--preset", "efficientnet_lite0", "--max-size", "300"]
SHEET_NAME = "chelsea_layers_contact_sheet.jpg"


#: The sample atlas (real weights, two layers x 16 channels and 8 classes, 128 px) and its page's screenshot.
ATLAS = Path("assets/atlas")
ATLAS_ARGS = ["--atlas", "--model", "efficientnet_lite0", "--layers", "block5", "block10", "--channels", "0-15",
              "--class", "goldfish", "flamingo", "jellyfish", "tarantula", "pizza", "strawberry", "lemon", "daisy",
              "--seed", "0", "--output", str(ATLAS)]
ATLAS_SHOT = Path("assets/atlas_page.jpg")


def screenshot(page: Path, out: Path, width: int = 1200) -> None:
    """The page as headless Chromium shows it (Debian: apt-get install chromium chromium-driver),
    every lazy thumbnail scrolled into view first, the whole page tall."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        driver.get(page.resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        # The viewport itself, the whole page tall (a window's size would include its frame).
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    import io

    from PIL import Image
    Image.open(io.BytesIO(png)).convert("RGB").save(out, quality=85)


def command(args: list[str], output: Path) -> str:
    return "python dream.py " + shlex.join([*args, *MODEL, "--output", str(output)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print each demo's dream.py command and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="remake only these demos (file names), or 'atlas': the sample atlas and its screenshot")
    opts = parser.parse_args()

    import numpy as np

    from deepdream.cli.args import still_parser
    from deepdream.cli.settings import settings_for_model
    from deepdream.cli.start_image import still_start
    from deepdream.contact_sheet import contact_sheet
    from deepdream.image_io import save_image
    from deepdream.dreamer import Dreamer
    from deepdream.errors import make_notify
    from deepdream.loading import load_dream_model

    sheet_commands = {f"layer {layer}": command([*SHEET_ARGS, "--layers", layer], OUT / f"layer_{layer}.jpg")
                      for layer in SHEET_LAYERS}
    atlas_command = "python dream.py " + shlex.join(ATLAS_ARGS)
    if opts.list:
        for name, args in DEMOS.items():
            print(command(args, OUT / name))
        for cmd in sheet_commands.values():
            print(cmd)
        print(atlas_command)
        return 0
    if opts.only == ["atlas"]:   # its own process: dream.py --atlas, then the screenshot
        import subprocess

        subprocess.run([sys.executable, str(ROOT / "dream.py"), *ATLAS_ARGS], cwd=ROOT, check=True)
        screenshot(ROOT / ATLAS / "index.html", ROOT / ATLAS_SHOT)
        print(f"{ATLAS_SHOT}  = {atlas_command}, seen by headless Chromium")
        return 0

    model = load_dream_model("efficientnet_lite0")   # first run: converts the package weights, with a notice
    notify = make_notify(False)

    def render(args: list[str]) -> np.ndarray:
        parsed = still_parser().parse_args([*args, *MODEL, "--quiet"])
        settings = settings_for_model(parsed, model, notify)
        rng = np.random.default_rng(settings.seed)
        image, _ = still_start(parsed, rng)
        return Dreamer(model, settings, quiet=True, notify=notify)(image, rng=rng), image

    (ROOT / OUT).mkdir(parents=True, exist_ok=True)
    for name, args in DEMOS.items():
        if opts.only and name not in opts.only:
            continue
        start = time.perf_counter()
        result, _ = render(args)
        save_image(ROOT / OUT / name, result)
        print(f"{OUT / name}  ({time.perf_counter() - start:.0f} s)  = {command(args, OUT / name)}")
    if not opts.only or SHEET_NAME in opts.only:
        start = time.perf_counter()
        items = []
        for layer in SHEET_LAYERS:
            result, image = render([*SHEET_ARGS, "--layers", layer])
            if not items:
                items.append(("input", image))
            items.append((layer, result))
        sheet = contact_sheet(items, cell=256, columns=4)
        save_image(ROOT / OUT / SHEET_NAME, np.asarray(sheet, np.float32) / 255.0)
        print(f"{OUT / SHEET_NAME}  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    run_main(main)
