"""Fine-tuning on several processes: images per second for 1 rank x 2 threads against 2 ranks x
1 thread on this machine, the time each step spends in its one all_sum, and what 4 and 16 hosts
would do over a 10 GbE link.

    python -m benchmarks.train_ranks                      # efficientnet_lite0, 192 images, 128 px, batch 32
    python -m benchmarks.train_ranks --model googlenet --image-size 160

Each configuration is a fresh process group (``mlx.launch`` for two ranks) training the same
generated ImageFolder with the same global batch, compiled as train_dream.py does; the first
epoch (kernel builds, compilation) is left out of the timing. Validation is timed on its own:
split over two ranks and summed (what training does) against one process with one thread
going through every image (the cost of validating on rank 0 alone, with the other rank idle).

The projection: a step on N hosts is the compute of B/N images at this machine's measured rate
(1 rank x 2 threads) plus a ring all-reduce of the step's vector, 2 (N - 1) / N of its bytes
through each host's link. MLX sums after the backward pass, so nothing overlaps the two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402  (fast BLAS before anything imports mlx; sets threads per rank)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.ranked import run_worker  # noqa: E402
from benchmarks.report import markdown_table  # noqa: E402
from deepdream import distributed as dist  # noqa: E402

#: A 10 GbE link's payload rate (bytes/s): 10 Gbit/s less Ethernet, IP and TCP framing (~6 %).
LINK_BYTES_S = 10e9 / 8 * 0.94
#: One ring hop's latency on such a link (a TCP round trip between two hosts on one switch).
HOP_LATENCY_S = 50e-6


def make_dataset(root: Path, images: int, classes: int, size: int) -> Path:
    """An ImageFolder of random pictures (a tint per class): throughput does not depend on content."""
    rng = np.random.default_rng(0)
    for i in range(images):
        label = i % classes
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.random((size, size, 3)) * 0.6
        noise[..., label % 3] += 0.4
        Image.fromarray((noise * 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
    return root


# -- the worker: one rank of one configuration ---------------------------------------------

def worker(data: Path, out: Path, config: dict) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from deepdream.dataset import scan_image_folder
    from deepdream.training import BatchLoader, StopRequest, TrainConfig, evaluate, fit, prepare_run, start

    with dist.session("a benchmark worker"):
        run = prepare_run(TrainConfig(**config), scan_image_folder(data))
        start(run, None)
        stamps: list[tuple[int, float]] = []
        comm: list[float] = []

        cpu: list[float] = []

        def on_step(epoch: int, _batch: int, _loss: float) -> None:
            stamps.append((epoch, time.perf_counter()))
            cpu.append(time.process_time())
            comm.append(getattr(run.step, "comm_seconds", 0.0))

        started = time.perf_counter()
        fit(run, out / "ck" / "last.npz", StopRequest(), quiet=True, log=lambda _line: None, on_step=on_step)
        timed = [i for i, (epoch, _) in enumerate(stamps) if epoch >= 1]
        seconds = stamps[timed[-1]][1] - stamps[timed[0] - 1][1]
        all_sum = comm[timed[-1]] - comm[timed[0] - 1]
        cpu_seconds = cpu[timed[-1]] - cpu[timed[0] - 1]
        with BatchLoader(run.data) as loader:
            evaluate(run.model, loader, run.val_idx, run.config, run.frozen, StopRequest())  # warm
            dist.barrier()
            t, c = time.perf_counter(), time.process_time()
            evaluate(run.model, loader, run.val_idx, run.config, run.frozen, StopRequest())
            val_seconds, val_cpu = time.perf_counter() - t, time.process_time() - c
        # The all_sum alone, both ranks ready (the step's figure also holds waiting for the slower rank).
        vector = mx.zeros((max(getattr(run.step, "vector_bytes", 0) // 4, 1),))
        alone = []
        for _ in range(5):
            dist.barrier()
            t = time.perf_counter()
            dist.all_sum(vector)
            alone.append(time.perf_counter() - t)
        per_rank = dist.gather_json({"all_sum_s": all_sum, "val_s": val_seconds, "cpu_s": cpu_seconds,
                                     "val_cpu_s": val_cpu})
        if dist.is_main():
            (out / "result.json").write_text(json.dumps({
                "ranks": dist.size(), "threads": os.environ.get("MKL_NUM_THREADS"), "steps": len(timed),
                "batch": run.config.batch_size, "seconds": seconds, "total_seconds": time.perf_counter() - started,
                "all_sum_s": max(r["all_sum_s"] for r in per_rank), "val_s": max(r["val_s"] for r in per_rank),
                "cpu_s": sum(r["cpu_s"] for r in per_rank), "val_cpu_s": sum(r["val_cpu_s"] for r in per_rank),
                "val_images": int(len(run.val_idx)), "all_sum_alone_s": float(np.median(alone)),
                "vector_bytes": getattr(run.step, "vector_bytes", 0),
                "trainable": int(sum(v.size for _, v in tree_flatten(run.model.trainable_parameters())))}))


# -- the parent: run each configuration, print the tables -------------------------------------

def run_config(name: str, ranks: int, threads: int, data: Path, out: Path, config: dict) -> dict:
    # One rank gets ``threads``; several share the host's cores out themselves (set_rank_threads).
    result = run_worker([str(Path(__file__).resolve()), "--worker", str(data), str(out), json.dumps(config)],
                        ranks, threads if ranks == 1 else None, out, name)
    result["name"] = name
    return result


def projection(rate_one_host: float, vector_bytes: int, batch: int, hosts: int) -> tuple[float, float]:
    """(images/s, all-reduce seconds per step) on ``hosts`` such machines sharing a global ``batch``."""
    reduce_s = 2 * (hosts - 1) / hosts * vector_bytes / LINK_BYTES_S + 2 * (hosts - 1) * HOP_LATENCY_S
    step_s = batch / hosts / rate_one_host + reduce_s
    return batch / step_s, reduce_s


def vector_sizes() -> list[tuple[str, int, int]]:
    """(model, trainable parameters, the step's vector in bytes) of every model with its default
    freezing, the weights not needed (random initialisation of the 1000-class model)."""
    from mlx.utils import tree_flatten

    from deepdream.training import default_freeze, freeze_up_to, set_mode, trained_buffers
    from models.registry import MODELS, build_model

    sizes = []
    for name in MODELS:
        model = build_model(name)
        frozen = freeze_up_to(model, default_freeze(model, name))
        set_mode(model, frozen, training=True)
        params = dict(tree_flatten(model.parameters()))
        trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        buffers = sum(params[k].size for k in trained_buffers(model))
        sizes.append((name, int(trainable), 4 * int(trainable + buffers + 3)))
        del model
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--images", type=int, default=240, help="dataset size (default 240: 192 train / 48 val)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="global batch (default 32)")
    p.add_argument("--epochs", type=int, default=3, help="epochs; the first is warm-up (default 3)")
    p.add_argument("--rounds", type=int, default=3,
                   help="runs of each configuration, interleaved; the tables show medians (default 3)")
    p.add_argument("--worker", nargs=3, metavar=("DATA", "OUT", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), json.loads(args.worker[2]))
        return 0

    import mlx.core as mx

    config = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
              "image_size": args.image_size, "val_split": 0.2, "seed": 0}
    print(f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"mlx {mx.__version__}, blas: {models.ensure_fast_blas()}, load {os.getloadavg()[0]:.1f}")
    print(f"{args.model}, default freezing (trainable BatchNorms), {args.images} images at {args.image_size} px, "
          f"global batch {args.batch_size}, compiled; epochs 2-{args.epochs} timed; the median of {args.rounds} "
          "interleaved rounds\n")
    with tempfile.TemporaryDirectory(prefix="deepdream-train-ranks-") as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", args.images, 4, args.image_size + args.image_size // 4)
        configs = (("1 rank x 1 thread", 1, 1), ("1 rank x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1))
        runs = [[run_config(name, ranks, threads, data, work / f"{i}{round_}", config)
                 for i, (name, ranks, threads) in enumerate(configs)] for round_ in range(args.rounds)]
    # The median round of each configuration by throughput (other processes share the machine).
    results = [sorted((r[i] for r in runs), key=lambda r: r["seconds"])[args.rounds // 2] for i in range(len(configs))]
    rows = []
    for r in results:
        per_step = r["seconds"] / r["steps"]
        rows.append([r["name"], f"{r['steps'] * r['batch'] / r['seconds']:.1f}", f"{per_step * 1000:.0f}",
                     f"{r['all_sum_s'] / r['steps'] * 1000:.1f}" if r["ranks"] > 1 else "-",
                     f"{100 * r['all_sum_s'] / r['seconds']:.1f}%" if r["ranks"] > 1 else "-",
                     f"{r['cpu_s'] / (r['steps'] * r['batch']) * 1000:.1f}", f"{r['val_s']:.2f}",
                     f"{r['val_cpu_s']:.2f}"])
    print(markdown_table(["configuration", "images/s", "ms/step", "all_sum ms/step", "share in all_sum",
                          "CPU ms/image (all ranks)", f"validation s ({results[0]['val_images']} images)",
                          "validation CPU s"], rows))
    two = results[2]
    print(f"\nThe step's vector: {two['vector_bytes'] / 1e6:.1f} MB ({two['trainable'] / 1e6:.2f} M trainable "
          "parameters + the trained BatchNorms' running statistics, float32); one all_sum per step. "
          f"Alone, with both ranks ready, it takes {two['all_sum_alone_s'] * 1000:.1f} ms here (ring over loopback); "
          "the rest of the step's all_sum time is waiting for the slower rank.")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    rate = results[1]["steps"] * results[1]["batch"] / results[1]["seconds"]
    rows = []
    for hosts in (1, 2, 4, 16):
        for batch in (args.batch_size, 16 * args.batch_size):
            images_s, reduce_s = projection(rate, two["vector_bytes"], batch, hosts)
            rows.append([str(hosts), str(batch), f"{images_s:.0f}", f"{images_s / rate:.1f}x",
                         f"{reduce_s * 1000:.1f}", f"{100 * reduce_s * images_s / batch:.0f}%"])
    print(f"\nProjection over 10 GbE ({LINK_BYTES_S * 8 / 1e9:.1f} Gbit/s payload, {HOP_LATENCY_S * 1e6:.0f} us "
          f"per hop), each host like this one (1 rank x 2 threads, {rate:.1f} images/s):\n")
    print(markdown_table(["hosts", "global batch", "images/s", "vs one host", "all-reduce ms/step",
                          "share in all-reduce"], rows))
    print("\nThe step's vector of every model (default freezing) and its ring all-reduce over 10 GbE:\n")
    rows = [[name, f"{trainable / 1e6:.1f}", f"{size / 1e6:.0f}",
             *(f"{projection(1.0, size, 1, hosts)[1] * 1000:.0f}" for hosts in (2, 4, 16))]
            for name, trainable, size in vector_sizes()]
    print(markdown_table(["model", "trainable M", "vector MB", "2 hosts ms", "4 hosts ms", "16 hosts ms"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
