"""Dreaming a clip (dream_video.py --video): frames per second, and what the optical flow costs.

    python -m benchmarks.video_clip                 # 512x288, efficientnet_lite0 and googlenet, 2 octaves x 5 steps
    python -m benchmarks.video_clip --frames 12 --models efficientnet_lite0

Two tables. The flow methods on motion known exactly (a photo panning 4 px per frame, as
H.264; the photo zoomed 3%): end-point error against the true motion and the time of one frame's carry (flow both
ways, occlusion check, warp, blend). Then the whole per-frame pipeline of ClipFrames (decode,
carry, dream) on that clip for each model, and the share of a frame's time the carry takes.
efficientnet_lite0 runs on its real weights (converted from their pip package on a first run,
which imports torch: time the second run); googlenet on random ones (the time is the same).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402  (fast BLAS before anything imports mlx)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import deepdream.video.clip as video_input  # noqa: E402
from benchmarks.clips import PAN, pan_frames, write_clip  # noqa: E402
from benchmarks.report import markdown_table  # noqa: E402
from deepdream.loading import load_dream_model  # noqa: E402
from deepdream.video.flow import FLOW_METHODS, Coherence, carry, dense_flow, gray  # noqa: E402
from deepdream.presets import recipe_for_model  # noqa: E402
from deepdream.dreamer import Dreamer  # noqa: E402
from deepdream.settings import DreamSettings  # noqa: E402

# Not benchmarks.measure: it imports torch, which slows MLX's BLAS in the same process (benchmarks/isolated.py).
from statistics import median  # noqa: E402


def machine_line() -> str:
    import mlx.core as mx

    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"python {platform.python_version()}, mlx {mx.__version__}, blas: {models.ensure_fast_blas()}")


#: Scale between the two frames of the zoom pair.
ZOOM = 1.03


def zoom_pair(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``frame`` (uint8) and it zoomed in by ZOOM about its centre, and the true flow from the second to the first."""
    height, width = frame.shape[:2]
    big = Image.fromarray(frame).resize((round(width * ZOOM), round(height * ZOOM)), Image.Resampling.BICUBIC)
    top, left = (big.height - height) // 2, (big.width - width) // 2
    zoomed = np.asarray(big)[top:top + height, left:left + width]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    truth = np.stack([(xs + left + 0.5) * width / big.width - 0.5 - xs,
                      (ys + top + 0.5) * height / big.height - 0.5 - ys], axis=2)
    return zoomed, truth


def flow_rows(frames: list[np.ndarray], repeats: int) -> list[list[str]]:
    """Per method: end-point error of the backward flow on the interior (the pan; a zoom), one carry's median time."""
    rows = []
    inner = (slice(16, -16), slice(16, -16))
    pan_truth = np.zeros(frames[0].shape[:2] + (2,), np.float32)
    pan_truth[..., 0] = PAN  # frame t(p) ~ frame t-1(p + (PAN, 0))
    zoomed, zoom_truth = zoom_pair(frames[0])
    pairs = [(after, before, pan_truth) for before, after in zip(frames, frames[1:])]
    for method in FLOW_METHODS:
        errors = {}
        for name, cases in (("pan", pairs), ("zoom", [(zoomed, frames[0], zoom_truth)])):
            misses = [dense_flow(gray(a / 255.0), gray(b / 255.0), method) - truth for a, b, truth in cases]
            errors[name] = np.mean([np.linalg.norm(miss[inner], axis=-1).mean() for miss in misses])
        coherence = Coherence(flow_method=method)
        first, second = frames[0] / 255.0, frames[1] / 255.0
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            carry(first, first, second, coherence)
            times.append(time.perf_counter() - start)
        rows.append([method, f"{errors['pan']:.3f}", f"{errors['zoom']:.3f}", f"{median(times) * 1e3:.1f}"])
    return rows


def pipeline_row(name: str, clip: video_input.Clip, octaves: int, steps: int, warmup: int) -> list[str]:
    """Frames per second of ClipFrames on ``clip`` with ``name``, and the carry's share of a frame."""
    if name == "efficientnet_lite0":
        model, weights = load_dream_model(name), "real"
    else:
        model, weights = models.build_model(name), "random"
    recipe = recipe_for_model(name)
    values = recipe.values() if recipe is not None else {}
    settings = DreamSettings(**{**values, "octaves": octaves, "steps": steps, "seed": 0})
    dreamer = Dreamer(model, settings, quiet=True)
    carried: list[float] = []
    real_carry = video_input.carry

    def timed_carry(*args, **kwargs):
        start = time.perf_counter()
        result = real_carry(*args, **kwargs)
        carried.append(time.perf_counter() - start)
        return result

    video_input.carry = timed_carry
    try:
        frames = video_input.ClipFrames(clip, lambda image, rng: dreamer(image, rng=rng, progress=False),
                                        Coherence(), blend=0.0, seed=0)
        previous, times = None, []
        for index in range(clip.frame_count):
            start = time.perf_counter()
            previous = frames(index, previous)
            times.append(time.perf_counter() - start)
    finally:
        video_input.carry = real_carry
    per_frame = median(times[warmup:])
    flow = median(carried[max(0, warmup - 1):])
    return [name, weights, f"{clip.size[0]}x{clip.size[1]}", f"{octaves}x{steps}", f"{per_frame:.2f}",
            f"{1 / per_frame:.2f}", f"{flow * 1e3:.0f}", f"{100 * flow / per_frame:.1f}%"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "googlenet"], metavar="NAME")
    parser.add_argument("--size", nargs=2, type=int, default=(512, 288), metavar=("W", "H"))
    parser.add_argument("--frames", type=int, default=10, help="frames dreamed per model (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="first frames left out of the median (compiles)")
    parser.add_argument("--octaves", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    width, height = args.size
    frames = pan_frames(args.frames, width, height)
    print(machine_line())
    with tempfile.TemporaryDirectory() as folder:
        path = write_clip(Path(folder) / "pan.mp4", frames, audio=None)
        clip = video_input.open_clip(path, max_size=max(width, height))
        decoded = [np.round(f * 255).astype(np.uint8) for f in video_input.read_frames(clip)]
        print(f"\nOptical flow at {width}x{height}: mean end-point error on an H.264 pan of {PAN} px per frame and "
              f"on a {ZOOM:g}x zoom; carry = flow both ways, occlusion check, warp, blend\n")
        print(markdown_table(["method", "pan error (px)", "zoom error (px)", "carry (ms)"],
                             flow_rows(decoded, repeats=5)))
        rows = [pipeline_row(name, clip, args.octaves, args.steps, args.warmup) for name in args.models]
    print(f"\nDreaming the clip frame by frame (median of frames {args.warmup + 1}-{args.frames}; decode + carry + "
          "dream)\n")
    print(markdown_table(["model", "weights", "size", "octaves x steps", "s / frame", "frames / s", "carry (ms)",
                          "carry share"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
