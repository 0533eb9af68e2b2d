"""Markdown tables of the benchmark results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass
class StepResult:
    model: str
    layers: list[str]
    size: int
    ours_s: float                 # median seconds per step
    torch_s: float
    step_flops: float             # forward + input-gradient FLOPs of one step
    agreement: float              # |our update - torch's| / |torch's update| (L2)
    repeats: int

    @property
    def ratio(self) -> float:
        return self.ours_s / self.torch_s

    def gflops(self, seconds: float) -> float:
        return self.step_flops / seconds / 1e9


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


@dataclass
class MemoryResult:
    model: str
    width: int
    height: int
    tile_size: int
    steps: int
    peak_rss_bytes: int
    seconds: float
    limit_bytes: int
    device_peak_bytes: int | None = None     # MLX's peak GPU memory, on a GPU run

    @property
    def ok(self) -> bool:
        return self.peak_rss_bytes < self.limit_bytes


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A GitHub markdown table; ``align`` has one 'l'/'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def step_table(results: Sequence[StepResult], sgemm_gflops: float) -> str:
    rows = []
    for r in results:
        rows.append([
            r.model, ", ".join(r.layers), str(r.size),
            f"{r.ours_s * 1000:.0f}", f"{r.torch_s * 1000:.0f}", f"**{r.ratio:.2f}**",
            f"{r.gflops(r.ours_s):.0f}", f"{100 * r.gflops(r.ours_s) / sgemm_gflops:.0f}%",
            f"{r.gflops(r.torch_s):.0f}", f"{r.step_flops / 1e9:.1f}", f"{r.agreement:.0e}",
        ])
    header = ["model", "layers", "px", "ours ms", "torch ms", "ours/torch", "ours GFLOP/s", "% of sgemm",
              "torch GFLOP/s", "GFLOP/step", "step diff"]
    return markdown_table(header, rows, "llrrrrrrrrr")


def end_to_end_table(results: Sequence[EndToEndResult]) -> str:
    rows = [[r.recipe, f"{r.width}x{r.height}", str(r.octaves), str(r.steps), f"{r.ours_s:.1f}", f"{r.torch_s:.1f}",
             f"**{r.ratio:.2f}**"] for r in results]
    return markdown_table(["recipe", "image", "octaves", "steps/octave", "ours s", "torch s", "ours/torch"], rows)


def memory_table(results: Sequence[MemoryResult]) -> str:
    on_gpu = any(r.device_peak_bytes is not None for r in results)
    rows = []
    for r in results:
        row = [r.model, f"{r.width}x{r.height}", str(r.tile_size), str(r.steps),
               f"{r.peak_rss_bytes / 2 ** 30:.2f} GiB", f"{r.seconds:.0f}",
               f"{'under' if r.ok else '**OVER**'} {r.limit_bytes / 2 ** 30:.0f} GiB"]
        if on_gpu:
            row.insert(5, f"{(r.device_peak_bytes or 0) / 2 ** 30:.2f} GiB")
        rows.append(row)
    header = ["model", "image", "tile", "steps", "peak RSS", "seconds", "limit"]
    if on_gpu:
        header.insert(5, "peak GPU memory")
    return markdown_table(header, rows, "llrrrrrl" if on_gpu else "llrrrrl")


def header_lines(machine: Mapping[str, str], threads: int, sgemm_gflops: float,
                 load_before: Sequence[float], load_after: Sequence[float], same_process: bool = False) -> str:
    timing = ("both sides in the benchmark's own process (--same-process)" if same_process else
              "each side in a worker process of its own (ours never imports torch), taking turns")
    return "\n".join([
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}, Python {machine['python']}",
        f"- MLX {machine['mlx']} (BLAS: {machine['blas']}); torch {machine['torch']} with {threads} threads",
        *([f"- GPU: {machine['gpu']}, both sides on it"] if machine.get("gpu") else []),
        f"- MLX sgemm (2048^3): {sgemm_gflops:.0f} GFLOP/s",
        f"- timing: {timing}",
        (f"- load average (1/5/15 min) before: {' '.join(f'{v:.2f}' for v in load_before)}; "
         f"after: {' '.join(f'{v:.2f}' for v in load_after)}"),
    ])


FOOTNOTES = (
    "ours/torch < 1 means ours is faster. Times are medians of interleaved repeats after warm-up. "
    "GFLOP/step counts the convolutions and linear layers a step runs, forward plus gradient to the "
    "input (2 x the forward FLOPs: each layer's input gradient is a transposed product of the same "
    "size; no weight gradients), from the layer shapes. '% of sgemm' is ours against MLX's own "
    "2048^3 matmul rate. 'step diff' is ||our update - torch's|| / ||torch's update|| (L2) for one "
    "step from the same image with the same jitter: both sides compute the same step."
)
