"""``--info`` (the machine, MLX, the BLAS, which weights are present) and ``--list-layers``."""

from __future__ import annotations

import argparse
import platform

from models import MODELS, DreamModel, build_model, default_weights_path, list_models, weights_available

from .. import distributed as dist
from ..loading import load_dream_model
from .model_choice import is_all, model_name_from_args
from .settings import validate_args


def info_text() -> str:
    import mlx.core as mx

    from fastlayers import _blas, native

    from .. import device

    lines = [
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"mlx {mx.__version__}, {device.description()}",
    ]
    if device.on_gpu():
        lines.append("CPU-only machinery (fast BLAS, native CPU kernels, CPU convolution paths): off, "
                     "the GPU runs MLX's own operations")
    else:
        native.load()   # builds the native kernels if this is the first run (CI's first command)
        lines += [f"blas: {_blas.blas_in_use}",
                  f"native CPU kernels (depthwise convolution, pooling): {native.status}"]
        if wheel := _blas.gpu_wheel():
            lines.append(f"note: {wheel} is installed but MLX sees no GPU (driver or CUDA libraries missing?)")
    lines.append(f"processes: {dist.describe()}" + ("" if dist.size() > 1 else
                                                     " (mlx.launch -n N -- python ... spreads a job over N ranks)"))
    lines.append("models:")
    for name, facts in MODELS.items():
        if weights_available(name):
            path = default_weights_path(name)
            where = str(path) if path.exists() else f"converted on first use from {facts.source}"
            lines.append(f"  {name:<20} weights present ({where})")
        else:
            lines.append(f"  {name:<20} weights missing: run `{facts.exporter}`")
    return "\n".join(lines)


def layer_listing(model: DreamModel) -> str:
    defaults = set(model.default_layers)
    aliases: dict[str, list[str]] = {}
    for alias, name in model.LAYER_ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    lines = []
    for name in model.layer_names:
        notes = (["default"] if name in defaults else []) + [f"alias {a}" for a in aliases.get(name, [])]
        lines.append(f"{name}  ({', '.join(notes)})" if notes else name)
    # Not a stage name but accepted by --layers: the class scores (--channels picks classes).
    if "logits" not in model.layer_names:
        lines.append("logits  (class scores; --channels N dreams class N)")
    return "\n".join(lines)


def handle_info_flags(args: argparse.Namespace) -> bool:
    """Print --info / --list-layers output; True when the script should stop there."""
    if args.info:
        dist.print0(info_text())
        return True
    if args.list_layers:
        if is_all(args):
            for name in list_models():
                dist.print0(f"{name}: {' '.join(build_model(name).layer_names)}")
            return True
        validate_args(args)
        name = model_name_from_args(args)
        # The layer names come from the architecture: no weights needed, unless a file was given.
        model = load_dream_model(name, args.weights) if args.weights else build_model(name)
        dist.print0(layer_listing(model))
        return True
    return False
