"""The size of a full atlas, projected from a measured sample: wall time and disk at 1, 4, 16 ranks.

    python -m benchmarks.atlas_size                                   # googlenet, every layer, 128 px
    python -m benchmarks.atlas_size --weights random_googlenet.npz --disk-from assets/atlas
    python -m benchmarks.atlas_size --model efficientnet_lite0 --layers block5 block10

For each layer, the atlas's own probe (``deepdream.atlas.probe``: one step to compile, then
``--probe-steps`` timed steps of a full batch, the renderer ``dream.py --atlas`` uses) gives the
seconds per image: step time x steps / batch. Times every channel of the layer, summed over the
layers: the one-rank wall time. At R ranks it is that over R plus the share of time spent moving
work and results (``--comm-share``, measured by the scale-out benchmark; 0 leaves it out), a
projection, not a measurement. On a busy machine the wall clock overstates a render's time and
the CPU time over the cores understates it; both are printed. Disk: the mean bytes per image (full-size PNG, thumbnail, its page)
of a finished atlas at the same size (``--disk-from``), times the images.

The render's cost does not depend on the weights' values, so random weights (an exporter's
``--random-init``) time a model whose pretrained file cannot be had here just as well.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402,F401  (fast BLAS before mlx)

from deepdream.atlas import format_duration, plan_atlas, probe  # noqa: E402
from deepdream.loading import load_dream_model  # noqa: E402
from deepdream.memory import format_bytes  # noqa: E402
from deepdream.visualise import Renderer, RenderSettings  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="googlenet")
    parser.add_argument("--weights", help="a weights file (e.g. from export_googlenet.py --random-init)")
    parser.add_argument("--layers", nargs="+", default=["all"], help="layers (default: all)")
    parser.add_argument("--size", type=int, default=128, help="render side in pixels (default 128)")
    parser.add_argument("--steps", type=int, default=RenderSettings().steps, help="steps per image (the default)")
    parser.add_argument("--batch", type=int, default=8, help="images per pass (the atlas's default)")
    parser.add_argument("--probe-steps", type=int, default=4, help="timed steps per probe (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="probes per layer and clock; the median counts")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--comm-share", type=float, default=0.0,
                        help="share of a rank's time spent communicating (the scale-out benchmark's figure)")
    parser.add_argument("--disk-from", type=Path, help="a finished atlas at the same size: its bytes per image")
    return parser.parse_args(argv)


def bytes_per_image(folder: Path) -> float:
    """Everything an atlas folder holds (images, thumbnails, pages, the index), per image."""
    images = [p for p in folder.glob("*/*.png")]
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return total / max(1, len(images))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = load_dream_model(args.model, args.weights)
    settings = RenderSettings(height=args.size, width=args.size, steps=args.steps, batch=args.batch)
    rows = []
    load = os.getloadavg()[0]
    wall_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for section in plan_atlas(model, Path(scratch), layers=args.layers):
            renderer = Renderer(model, section.plan.objective, settings)

            def median(clock) -> float:
                first = section.units(settings.batch)[0]
                return statistics.median(probe(renderer, section, first, 0, args.probe_steps, clock)
                                         for _ in range(args.repeats))
            per_image = settings.steps / settings.batch
            wall, cpu = median(time.perf_counter) * per_image, median(time.process_time) * per_image
            rows.append((section.title, section.count, wall, cpu, wall * section.count))
    measured = time.perf_counter() - wall_start
    images = sum(r[1] for r in rows)
    total = sum(r[4] for r in rows)
    name = f"{args.model}" + (f" ({Path(args.weights).name})" if args.weights else "")
    print(f"{name}: every channel of {len(rows)} layers, {args.size}x{args.size} px, {args.steps} steps, "
          f"batch {args.batch}; per layer the median of {args.repeats} probes of {args.probe_steps} steps "
          f"({measured:.0f} s; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after, "
          f"{os.cpu_count()} cores)")
    print()
    print("| layer | channels | s / image (wall) | s / image (CPU, all threads) | layer, 1 rank (wall) |")
    print("|---|---:|---:|---:|---:|")
    for title, count, wall, cpu, seconds in rows:
        print(f"| {title} | {count:,} | {wall:.2f} | {cpu:.2f} | {format_duration(seconds)} |")
    mean_cpu = sum(r[3] * r[1] for r in rows) / images
    print(f"| **all** | **{images:,}** | {total / images:.2f} (mean) | {mean_cpu:.2f} (mean) | "
          f"**{format_duration(total)}** |")
    print()
    disk = bytes_per_image(args.disk_from) * images if args.disk_from else None
    # A busy machine's wall clock overstates the time; CPU seconds over the cores understate it
    # (perfect use of every core): the two bound what a quiet machine of this kind takes.
    cpu_bound = sum(r[3] * r[1] for r in rows) / (os.cpu_count() or 1)
    share = f", + {args.comm_share:.0%} communication" if args.comm_share else ", communication not included"
    print(f"Projection: R machines like this one, one rank each{share}.")
    print()
    print(f"| ranks | wall, as measured | CPU time / {os.cpu_count()} cores | disk (rank 0) |")
    print("|---:|---:|---:|---:|")
    for ranks in args.ranks:
        scale = (1 + args.comm_share) / ranks
        print(f"| {ranks} | {format_duration(total * scale)} | {format_duration(cpu_bound * scale)} | "
              f"{format_bytes(disk) if disk else '-'} |")
    if disk:
        print(f"\ndisk: {bytes_per_image(args.disk_from) / 1e3:.1f} kB per image, measured on {args.disk_from}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
