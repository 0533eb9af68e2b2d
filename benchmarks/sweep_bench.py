"""Channel sweep timing: renders of N channels of one layer, batched through the network vs one at a time.

    python -m benchmarks.sweep_bench                        # 64 channels of block5, 128 px, efficientnet_lite0
    python -m benchmarks.sweep_bench --batches 1 16 64 --steps 8

Each row runs the whole sweep as ``dream.py --sweep`` does (``deepdream.sweep.run_sweep``: render,
write every PNG, the contact sheet) into a fresh folder, after an untimed one-step render at that
batch size has compiled the step. Ours only (a sweep has no PyTorch counterpart here); the rows
take turns in one process on the same weights, so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402,F401  (fast BLAS before mlx)

import numpy as np  # noqa: E402

from deepdream.loading import load_dream_model  # noqa: E402
from deepdream.sweep import run_sweep  # noqa: E402
from deepdream.visualise import Renderer, RenderSettings, plan_render, tile_targets  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--layer", default="block5")
    parser.add_argument("--channels", type=int, default=64, help="channels 0..N-1 (default 64)")
    parser.add_argument("--size", type=int, default=128, help="render side in pixels (default 128)")
    parser.add_argument("--steps", type=int, default=4, help="steps per render (default 4; time scales linearly)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16], help="batch sizes to time")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = load_dream_model(args.model)
    plan = plan_render(model, layers=[args.layer], channels=list(range(args.channels)), sweep=True)
    settings = RenderSettings(height=args.size, width=args.size, steps=args.steps, seed=0)
    renderer = Renderer(model, plan.objective, settings)
    rows = []
    for batch in args.batches:
        renderer.render(batch, tile_targets(plan.objective, batch).targets(), np.random.default_rng(0),
                        progress=False, steps=1)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            run_sweep(renderer, plan, Path(folder), batch, seed=0, quiet=True)
            rows.append((batch, time.perf_counter() - start))
    one = dict(rows).get(1)
    print(f"{args.model} {args.layer}, {args.channels} channels, {args.size}x{args.size}, {args.steps} steps each")
    print("| batch | sweep (s) | per channel (s) | vs one at a time |")
    print("|---:|---:|---:|---:|")
    for batch, seconds in rows:
        ratio = "(baseline)" if batch == 1 else f"{one / seconds:.2f}x faster" if one else "-"
        print(f"| {batch} | {seconds:.1f} | {seconds / args.channels:.3f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
