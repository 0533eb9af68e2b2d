"""Jobs spread over ranks: items per second for a folder batch, a sweep and a clip with 1 rank x 2
threads against 2 ranks x 1 thread on this machine, the share of time in the job runner's
exchanges; a clip's chunk border (hard cut against the dissolve); and a projection of a 3-minute
1080p clip on 1, 4 and 16 machines.

    python -m benchmarks.scale_out                 # everything (about 10-15 minutes on 2 cores)
    python -m benchmarks.scale_out --skip-border --skip-hd

Each configuration is a fresh process group (``mlx.launch`` for two ranks) running the real
script (dream.py, dream_video.py) twice in one process: the first run builds and traces what it
needs, the second is timed by the job runner itself (``JobReport.seconds``, from the plan to the
last write; each rank's time inside the round's two exchanges, waiting for the slower rank
included). Configurations are interleaved over ``--rounds`` and the median is shown.

The border: a pan clip dreamed in one chain, and its second half again from a chunk that starts
mid-scene (warm-up frames from the input alone, as ``deepdream/video/chunks.py`` does), compared
by the motion-compensated change between consecutive frames (the pan is known exactly).

The projection: a frame at 1920x1080 is timed here (1 rank x 2 threads, the clip's default
per-frame dream); each round moves every rank's input frame out of rank 0 (one all_sum of them
all) and every dreamed PNG back (one all_gather), each through a ring over 10 GbE; rank 0 also
decodes every rank's frame. Chunks after the first dream ``--chunk-warmup`` frames more.
"""

from __future__ import annotations

import argparse
import json
import math
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

from benchmarks.clips import PAN, pan_frames, write_clip  # noqa: E402
from benchmarks.ranked import run_worker  # noqa: E402
from benchmarks.report import markdown_table  # noqa: E402
from deepdream import distributed as dist  # noqa: E402

#: A 10 GbE link's payload rate (bytes/s) and one ring hop's latency (as benchmarks/train_ranks.py).
LINK_BYTES_S = 10e9 / 8 * 0.94
HOP_LATENCY_S = 50e-6
HD = (1920, 1080)
CLIP_FRAMES = 3 * 60 * 24
MODEL = ["--model", "efficientnet_lite0"]


def make_inputs(work: Path) -> None:
    """A folder of 8 photos of mixed sizes and a 48-frame pan clip with sound."""
    photos = work / "photos"
    photos.mkdir(parents=True)
    sources = [Image.open(ROOT / "assets" / n).convert("RGB") for n in ("chelsea.png", "coffee.png")]
    sizes = [(320, 240), (192, 192), (256, 320), (288, 200), (224, 160), (320, 320), (160, 224), (256, 192)]
    for i, size in enumerate(sizes):
        sources[i % 2].resize(size).save(photos / f"p{i}.jpg", quality=92)
    write_clip(work / "pan.mp4", pan_frames(48))


def job_argv(kind: str, work: Path, out: Path) -> tuple[str, list[str]]:
    if kind == "batch":
        return "dream", ["--input", str(work / "photos"), "--output", str(out), *MODEL, "--octaves", "2", "--steps",
                         "6", "--seed", "0", "--quiet"]
    if kind == "sweep":
        return "dream", [*MODEL, "--layers", "block5", "--channels", "0-15", "--sweep", "--batch", "4", "--width",
                         "128", "--height", "128", "--steps", "32", "--seed", "0", "--output", str(out), "--quiet"]
    return "dream_video", ["--video", str(work / "pan.mp4"), *MODEL, "--seed", "0", "--output", str(out / "clip.mp4"),
                           "--quiet"]


# -- the worker: one rank of one configuration ---------------------------------------------

def worker(kind: str, work: Path, out: Path) -> None:
    """Run the job twice (the second timed) and record its report (rank 0)."""
    import deepdream.jobs as jobs

    reports = []

    def recorded(job, **kwargs):
        report = real(job, **kwargs)
        reports.append(report)
        return report

    real = jobs.run_job
    name, _ = job_argv(kind, work, out)
    if name == "dream":
        import dream as script
    else:
        import dream_video as script
        import deepdream.video.modes as modes

        modes.run_job = recorded
    script.run_job = recorded
    for run in ("warm", "timed"):
        folder = out / run
        script.main(job_argv(kind, work, folder)[1])
    report = reports[-1]
    if dist.is_main():
        # A clip's chunk leaves its warm-up frames for the dissolve: not frames of the video.
        made = sum(1 for i in report.made for path in i.outputs if "-to-" not in Path(path).name)
        (out / "result.json").write_text(json.dumps({
            "ranks": dist.size(), "outputs": made, "seconds": report.seconds,
            "comm_s": max(report.comm_seconds), "costs": report.rank_costs}))


def run_config(kind: str, ranks: int, threads: int, work: Path, out: Path) -> dict:
    return run_worker([str(Path(__file__).resolve()), "--worker", kind, str(work), str(out)], ranks, threads, out,
                      f"{kind} on {ranks} ranks")


# -- the clip's border ------------------------------------------------------------------------

def changes(frames: list[np.ndarray], margin: int = 16) -> np.ndarray:
    """Motion-compensated change between consecutive frames of the pan, mean |difference| in 0-255."""
    inner = slice(margin, -margin)
    return 255 * np.array([np.abs(b[inner, margin:-margin - PAN] - a[inner, margin + PAN:-margin]).mean()
                           for a, b in zip(frames, frames[1:])])


def border_rows(count: int, at: int, warmups: list[int]) -> tuple[list[list[str]], float]:
    """The border of a chunk starting at frame ``at`` of a ``count``-frame pan, for each warm-up."""
    from deepdream.cli.args import still_parser
    from deepdream.cli.settings import settings_for_model
    from deepdream.dreamer import Dreamer
    from deepdream.loading import load_dream_model
    from deepdream.video.clip import clip_frame, open_clip, read_frames
    from deepdream.video.flow import Coherence
    from deepdream.video.modes import FRAME_DEFAULTS
    from deepdream.video.store import quantise

    with tempfile.TemporaryDirectory() as tmp:
        clip = open_clip(write_clip(Path(tmp) / "pan.mp4", pan_frames(count), audio=None), max_size=512)
        inputs = list(read_frames(clip))
    model = load_dream_model("efficientnet_lite0")
    settings = settings_for_model(still_parser().parse_args(MODEL), model, lambda _: None, over_recipe=FRAME_DEFAULTS)
    dreamer = Dreamer(model, settings, quiet=True)
    coherence = Coherence()

    def chain(begin: int) -> dict[int, np.ndarray]:
        out, previous_input, previous = {}, None, None
        for i in range(begin, count):
            previous = quantise(clip_frame(i, inputs[i], previous_input, previous, coherence, 0.0,
                                           lambda im, rng: dreamer(im, rng=rng, progress=False), 1))
            out[i], previous_input = previous, inputs[i]
        return out

    started = time.perf_counter()
    one = chain(0)
    per_frame = (time.perf_counter() - started) / count
    median = float(np.median(changes([one[i] for i in range(count)])))
    rows = [["one chain (no border)", "-", f"{median:.2f}", "1.00", "-"]]
    for warmup in warmups:
        chunk = chain(at - warmup)
        apart = float(np.abs(chunk[at] - one[at]).mean() * 255)
        hard = [one[i] for i in range(at)] + [chunk[i] for i in range(at, count)]
        rows.append([f"chunk at {at}, warm-up {warmup}, hard cut", str(warmup), f"{changes(hard)[at - 1]:.2f}",
                     f"{changes(hard)[at - 1] / median:.2f}", f"{apart:.1f}"])
        if warmup:
            mixed = [one[i] for i in range(at - warmup)]
            mixed += [quantise((1 - w) * one[i] + w * chunk[i]) for k, i in enumerate(range(at - warmup, at))
                      for w in [(k + 1) / (warmup + 1)]]
            mixed += [chunk[i] for i in range(at, count)]
            worst = changes(mixed)[at - warmup - 1:at].max()
            rows.append([f"chunk at {at}, warm-up {warmup}, dissolve", str(warmup), f"{worst:.2f}",
                         f"{worst / median:.2f}", f"{apart:.1f}"])
    return rows, per_frame


# -- the projection ---------------------------------------------------------------------------

def hd_frame() -> dict[str, float]:
    """One 1920x1080 clip frame (flow, carry, the default per-frame dream): seconds (the median of three, warm),
    its PNG's bytes, and a 1080p H.264 frame's decode time."""
    from deepdream.cli.args import still_parser
    from deepdream.cli.settings import settings_for_model
    from deepdream.dreamer import Dreamer
    from deepdream.image_io import encode_image
    from deepdream.loading import load_dream_model
    from deepdream.video.clip import clip_frame, decoded_frames, open_clip
    from deepdream.video.flow import Coherence
    from deepdream.video.modes import FRAME_DEFAULTS
    from deepdream.video.store import quantise

    with tempfile.TemporaryDirectory() as tmp:
        path = write_clip(Path(tmp) / "hd.mp4", pan_frames(24, *HD), audio=None)
        clip = open_clip(path, max_size=max(HD))
        decoded = decoded_frames(clip)
        frames = [next(decoded)]                       # opening the file is not a frame's cost
        started = time.perf_counter()
        frames += list(decoded)
        decode_s = (time.perf_counter() - started) / (len(frames) - 1)
        frames = [f.astype(np.float32) / 255 for f in frames[:5]]
    model = load_dream_model("efficientnet_lite0")
    settings = settings_for_model(still_parser().parse_args(MODEL), model, lambda _: None, over_recipe=FRAME_DEFAULTS)
    dreamer = Dreamer(model, settings, quiet=True)
    times, frame = [], None
    for i in (1, 2, 3, 4):  # the first builds and traces what this size needs
        started = time.perf_counter()
        frame = quantise(clip_frame(i, frames[i], frames[i - 1], frames[i - 1], Coherence(), 0.0,
                                    lambda im, rng: dreamer(im, rng=rng, progress=False), 0))
        times.append(time.perf_counter() - started)
    return {"seconds": float(np.median(times[1:])), "png_bytes": len(encode_image(frame, "f.png")), "decode_s": decode_s}


def project(hd: dict[str, float], machines: int, warmup: int, link: float = LINK_BYTES_S) -> tuple[float, float]:
    """(hours for the 3-minute clip, share of a round spent moving frames) on ``machines`` like this one."""
    raw = HD[0] * HD[1] * 3
    if machines == 1:
        move = 0.0
    else:
        out = 2 * (machines - 1) / machines * machines * raw / link      # every rank's input frame, one all_sum
        back = (machines - 1) / machines * machines * hd["png_bytes"] / link  # every PNG, one all_gather
        move = out + back + 3 * (machines - 1) * HOP_LATENCY_S + machines * hd["decode_s"]
    frames = math.ceil(CLIP_FRAMES / machines) + (warmup if machines > 1 else 0)
    round_s = hd["seconds"] + move
    return frames * round_s / 3600, move / round_s


def jobs_table(rounds: int) -> None:
    """Each job on 1 rank x 2 threads and 2 ranks x 1 thread, interleaved over ``rounds``: the medians."""
    configs = (("1 rank x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1))
    kinds = ("batch", "sweep", "clip")
    with tempfile.TemporaryDirectory(prefix="deepdream-scale-out-") as tmp:
        work = Path(tmp)
        make_inputs(work)
        runs: dict[tuple[str, str], list[dict]] = {}
        for round_ in range(rounds):
            for kind in kinds:
                for name, ranks, threads in configs:
                    result = run_config(kind, ranks, threads, work, work / f"{kind}{ranks}r{round_}")
                    runs.setdefault((kind, name), []).append(result)
    rows = []
    for kind in kinds:
        base = None
        for name, ranks, _ in configs:
            r = sorted(runs[(kind, name)], key=lambda r: r["seconds"])[rounds // 2]
            rate = r["outputs"] / r["seconds"]
            base = base or rate
            shares = " / ".join(f"{c / sum(r['costs']):.0%}" for c in r["costs"]) if ranks > 1 else "-"
            rows.append([kind, name, str(r["outputs"]), f"{r['seconds']:.1f}", f"{rate:.2f}", f"{rate / base:.2f}x",
                         f"{100 * r['comm_s'] / r['seconds']:.1f}%" if ranks > 1 else "-", shares])
    print(markdown_table(["job", "configuration", "outputs", "seconds", "outputs/s", "vs 1 rank",
                          "time in exchanges", "ranks' shares"], rows))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="runs of each configuration, interleaved (default 3)")
    p.add_argument("--skip-jobs", action="store_true", help="leave out the jobs on 1 and 2 ranks")
    p.add_argument("--skip-border", action="store_true", help="leave out the chunk border measurement")
    p.add_argument("--skip-hd", action="store_true", help="leave out the 1080p frame (and the projection)")
    p.add_argument("--worker", nargs=3, metavar=("KIND", "WORK", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))
        return 0

    import mlx.core as mx

    from deepdream.video.clip import CHUNK_WARMUP

    print(f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"mlx {mx.__version__}, blas: {models.ensure_fast_blas()}, load {os.getloadavg()[0]:.1f}")
    print("efficientnet_lite0. batch: 8 photos 160-320 px, 2 octaves x 6 steps; sweep: 16 channels of block5 at "
          "128 px, 32 steps, 4 per pass; clip: 48 frames of a 256x192 pan with sound, the per-frame defaults. "
          f"Median of {args.rounds} interleaved rounds, each the second run in its processes.\n")
    if not args.skip_jobs:
        jobs_table(args.rounds)

    if not args.skip_border:
        rows, per_frame = border_rows(48, 24, [0, 4, CHUNK_WARMUP, 16])
        print(f"\nA chunk's border on a 48-frame 256x192 pan (border at frame 24; {per_frame:.2f} s a frame): the "
              "motion-compensated change between consecutive frames (0-255), worst pair across the border against "
              "the median of one chain; 'apart': mean |chunk - chain| at the border frame.\n")
        print(markdown_table(["frames", "warm-up", "change", "vs median", "apart"], rows))

    if not args.skip_hd:
        hd = hd_frame()
        print(f"\nA 1920x1080 clip frame here (1 rank x 2 threads, the per-frame defaults, median of 3): "
              f"{hd['seconds']:.1f} s; its "
              f"PNG {hd['png_bytes'] / 1e6:.1f} MB; decoding a 1080p frame {hd['decode_s'] * 1000:.0f} ms. "
              f"A 3-minute 24 fps clip ({CLIP_FRAMES} frames) on machines like this one, frames moved over 10 GbE "
              f"(and 1 GbE), --chunk-warmup {CHUNK_WARMUP}:\n")
        rows = []
        for machines in (1, 4, 16):
            hours, share = project(hd, machines, CHUNK_WARMUP)
            slow_hours, slow_share = project(hd, machines, CHUNK_WARMUP, link=LINK_BYTES_S / 10)
            rows.append([str(machines), f"{hours:.1f}", f"{share:.1%}", f"{slow_hours:.1f}", f"{slow_share:.1%}"])
        print(markdown_table(["machines", "hours (10 GbE)", "moving frames", "hours (1 GbE)", "moving frames"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
