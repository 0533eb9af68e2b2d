"""Markdown tables of the benchmark results."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from benchmarks.measure import Limits, StepCost
from benchmarks.memory_bench import MemoryResult, TilingSpeed


@dataclass
class StepResult:
    model: str
    layers: list[str]
    size: int
    ours_s: float                 # median seconds per step
    torch_s: float
    cost: StepCost                # what forward + input gradient compute and move
    agreement: float              # |our update - torch's| / |torch's update| (L2)
    repeats: int

    @property
    def ratio(self) -> float:
        return self.ours_s / self.torch_s


@dataclass
class EndToEndResult:
    recipe: str
    width: int
    height: int
    octaves: int
    steps: int
    ours_s: float
    torch_s: float

    @property
    def ratio(self) -> float:
        return self.ours_s / self.torch_s


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A GitHub markdown table; ``align`` has one 'l'/'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _share(value: float) -> str:
    """Two decimals, or two significant digits for tiny shares (a test-size image)."""
    return f"{value:.2f}" if value >= 0.095 else f"{value:.2g}"


def step_table(results: Sequence[StepResult], limits: Limits) -> str:
    rows = []
    for r in results:
        flop_limit, byte_limit = r.cost.flop_limit_s(limits.sgemm_gflops), r.cost.byte_limit_s(limits.stream_gbps)
        roofline = r.cost.roofline_s(limits.sgemm_gflops, limits.stream_gbps)
        rows.append([
            r.model, ", ".join(r.layers), str(r.size),
            f"{r.ours_s * 1000:.0f}", f"{r.torch_s * 1000:.0f}", f"**{r.ratio:.2f}**",
            f"{r.cost.flops / 1e9:.3g}", f"{flop_limit * 1000:.3g}", f"**{_share(flop_limit / r.ours_s)}**",
            _share(flop_limit / r.torch_s),
            f"{r.cost.bytes / 1e9:.3g}", f"{byte_limit * 1000:.3g}", f"**{_share(byte_limit / r.ours_s)}**",
            _share(byte_limit / r.torch_s),
            f"{roofline * 1000:.3g}", f"**{_share(roofline / r.ours_s)}**", _share(roofline / r.torch_s),
            f"{r.agreement:.0e}",
        ])
    header = ["model", "layers", "px", "ours ms", "torch ms", "ours/torch",
              "GFLOP", "FLOP limit ms", "share ours", "share torch",
              "GB moved", "byte limit ms", "share ours", "share torch",
              "roofline ms", "share ours", "share torch", "step diff"]
    return markdown_table(header, rows, "llr" + "r" * 15)


def end_to_end_table(results: Sequence[EndToEndResult]) -> str:
    rows = [[r.recipe, f"{r.width}x{r.height}", str(r.octaves), str(r.steps), f"{r.ours_s:.1f}", f"{r.torch_s:.1f}",
             f"**{r.ratio:.2f}**"] for r in results]
    return markdown_table(["recipe", "image", "octaves", "steps/octave", "ours s", "torch s", "ours/torch"], rows)


def memory_table(results: Sequence[MemoryResult], limit_bytes: int) -> str:
    """Rows: models; columns: megapixels. Each cell: measured peak RSS (predicted; tiles of the full-size octave)."""
    sizes = sorted({(r.width, r.height) for r in results}, key=lambda s: s[0] * s[1])
    by_cell = {(r.model, (r.width, r.height)): r for r in results}
    models = list(dict.fromkeys(r.model for r in results))
    rows = []
    for model in models:
        row = [model]
        for size in sizes:
            r = by_cell.get((model, size))
            if r is None:
                row.append("")
                continue
            over = "" if r.peak_rss_bytes <= limit_bytes else " **OVER**"
            tiles = "whole" if r.tiles == 1 else f"{r.tiles} tiles"
            predicted = "-" if math.isnan(r.predicted_bytes) else f"{r.predicted_bytes / 2 ** 30:.2f}"
            wrong_size = "" if r.output_size == size else f" output {r.output_size[0]}x{r.output_size[1]}!"
            row.append(f"{r.peak_rss_bytes / 2 ** 30:.2f}{over} ({predicted}; {tiles}){wrong_size}")
        rows.append(row)
    header = ["model"] + [f"{w * h / 1e6:.0f} MP ({w}x{h})" if w * h >= 1e6 else f"{w}x{h}" for w, h in sizes]
    return markdown_table(header, rows)


def prediction_table(results: Sequence[MemoryResult]) -> str:
    rows = [[r.model, f"{r.width}x{r.height}", f"{r.predicted_bytes / 2 ** 30:.2f}", f"{r.peak_rss_bytes / 2 ** 30:.2f}",
             f"{100 * r.error:+.0f}%", "whole" if r.tiles == 1 else str(r.tiles), f"{r.seconds:.0f}"]
            for r in results if not math.isnan(r.predicted_bytes)]
    return markdown_table(["model", "image", "predicted GiB", "measured GiB", "error", "tiles", "seconds"], rows)


def tiling_speed_table(results: Sequence[TilingSpeed]) -> str:
    rows = [[r.model, f"{r.width}x{r.height}", f"{r.per_megapixel(r.whole_s):.2f}",
             f"{r.per_megapixel(r.tiled_s):.2f}", f"{r.tiles} of {r.tile_shape[1]}x{r.tile_shape[0]}",
             f"**{r.ratio:.2f}**"] for r in results]
    return markdown_table(["model", "image", "whole s/MP-step", "tiled s/MP-step", "tiles", "tiled/whole"], rows)


def header_lines(machine: Mapping[str, str], threads: int, limits: Limits,
                 load_before: Sequence[float], load_after: Sequence[float], same_process: bool = False) -> str:
    timing = ("both sides in the benchmark's own process (--same-process)" if same_process else
              "each side in a worker process of its own (ours never imports torch), taking turns")
    return "\n".join([
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}, Python {machine['python']}",
        f"- MLX {machine['mlx']} (BLAS: {machine['blas']}); torch {machine['torch']} with {threads} threads",
        *([f"- GPU: {machine['gpu']}, both sides on it"] if machine.get("gpu") else []),
        f"- MLX sgemm (2048^3, in a process without torch): {limits.sgemm_gflops:.0f} GFLOP/s; memory bandwidth "
        f"(STREAM triad, torch, {threads} threads): {limits.stream_gbps:.1f} GB/s",
        f"- timing: {timing}",
        (f"- load average (1/5/15 min) before: {' '.join(f'{v:.2f}' for v in load_before)}; "
         f"after: {' '.join(f'{v:.2f}' for v in load_after)}"),
    ])


FOOTNOTES = (
    "ours/torch < 1 means ours is faster. Times are medians of interleaved repeats after warm-up. "
    "The limits: GFLOP counts the direct convolutions and linear layers of one step's forward pass to "
    "the layers and its input gradient (no weight gradients), by torch's FlopCounterMode on the torch "
    "side's graph, once per model and size; the FLOP limit is that over MLX's sgemm rate above. "
    "GB moved is what those operations read and write at least once (each forward's input, weights and "
    "output; each backward's output gradient, weights and input gradient: element-wise work fused in); "
    "the byte limit is that over the memory bandwidth above. The roofline takes each of those operations "
    "at whichever rate binds it (its FLOPs over the sgemm rate or its bytes over the bandwidth, the longer) "
    "and sums them. A share is a limit over the measured time "
    "(1 = at the limit; Winograd's 3x3 layers can take a share past 1). 'step diff' is "
    "||our update - torch's|| / ||torch's update|| (L2) for one step from the same image with the same "
    "jitter: both sides compute the same step."
)
