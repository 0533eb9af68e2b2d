"""Where a step's time goes: per-stage cost of forward + input gradient, ours vs torch.

For each stage s of the model (input to output, up to a limit) both sides time the gradient
of mean(activation_s^2) w.r.t. the input (ours compiled, BatchNorms folded, like the engine's
step), which runs every stage up to s forward and back. The increase over the previous stage is that stage's
own cost. It is a differential measurement, so small stages read noisy; the big ones are what
matters. Beside each stage, its roofline (``measure.StepCost.roofline_s``, counted on the torch
side's graph the same way): how far each stage is from what the machine allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
import torch

from fastlayers.batchnorm import constant_weights

from .measure import TIMERS, Limits, StepCost, Timer, interleaved_times, median, step_cost
from .pairs import ModelPair, torch_layer
from .report import markdown_table
from .torch_dream import LayerTap


@dataclass
class StageCost:
    stage: str
    ours_s: float            # cumulative: input -> this stage -> gradient back to the input
    torch_s: float
    cost: StepCost           # cumulative too: what input -> this stage -> gradient computes and moves


def profile_stages(pair: ModelPair, size: int, upto: str | None = None, warmup: int = 1,
                   repeats: int = 3, timer: Timer = TIMERS["wall"]) -> list[StageCost]:
    model = pair.ours
    stages = [name for name in model.layer_names]
    last = upto or max(pair.layers, key=stages.index)
    stages = stages[: stages.index(last) + 1]
    x_np = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)
    x_mx = mx.array(x_np)
    x_t = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2)))
    costs = []
    for stage in stages:
        try:
            module = torch_layer(pair.name, pair.net, stage)
        except (ValueError, AttributeError, IndexError):
            continue                    # a stage the torch reference does not expose as a module

        def loss(x: mx.array, stage: str = stage) -> mx.array:
            with constant_weights():            # as the engine's step runs the model
                a = model(x, outputs=[stage])[stage]
            return mx.mean(a * a)

        grad = mx.compile(mx.grad(loss))
        tap = LayerTap(pair.net, {stage: module})

        def torch_loss(x: torch.Tensor, tap: LayerTap = tap, stage: str = stage) -> torch.Tensor:
            a = tap(x)[stage]
            return (a * a).mean()

        def torch_grad(stage_loss: Callable[[torch.Tensor], torch.Tensor] = torch_loss) -> torch.Tensor:
            x = x_t.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(stage_loss(x), x)
            return g

        try:
            times = interleaved_times({"ours": lambda grad=grad: mx.eval(grad(x_mx)), "torch": torch_grad},
                                      warmup, repeats, timer)
            cost = step_cost(torch_loss, x_t)
        finally:
            tap.remove()
        costs.append(StageCost(stage, median(times["ours"]), median(times["torch"]), cost))
    return costs


def profile_table(costs: list[StageCost], limits: Limits) -> str:
    rows = []
    prev_ours = prev_torch = prev_roof = 0.0
    for c in costs:
        roof = c.cost.roofline_s(limits.sgemm_gflops, limits.stream_gbps)
        rows.append([c.stage, f"{(c.ours_s - prev_ours) * 1000:.1f}", f"{(c.torch_s - prev_torch) * 1000:.1f}",
                     f"{(roof - prev_roof) * 1000:.2f}", f"{c.ours_s * 1000:.1f}", f"{c.torch_s * 1000:.1f}",
                     f"{roof * 1000:.2f}", f"{c.ours_s / c.torch_s:.2f}", f"{roof / c.ours_s:.2f}"])
        prev_ours, prev_torch, prev_roof = c.ours_s, c.torch_s, roof
    return markdown_table(["stage", "ours ms (stage)", "torch ms (stage)", "roofline ms (stage)",
                           "ours ms (cumulative)", "torch ms (cumulative)", "roofline ms (cumulative)",
                           "ours/torch", "roofline share"], rows)
