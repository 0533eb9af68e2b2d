"""torch/torchvision state dicts -> ``weights/<name>_mlx.npz``. Imports torch; never used while dreaming.

Every exporter script is a thin call to ``export_main``. The layout change happens in one
place, ``to_mlx_layout``; the per-architecture key renames live next to each architecture
as ``convert_torch_state_dict`` (defaulting to ``convert_state_dict`` with no renames).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .registry import architecture_module, default_weights_path, get_spec
from .weights import save_weights


def to_mlx_layout(array: np.ndarray) -> np.ndarray:
    """The only layout change: torch conv kernels are OIHW, MLX's are OHWI. Linear, BN and bias keep theirs."""
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


def linear_after_nchw_flatten(weight: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """Reorder the columns of the first Linear after a flatten from torch's (C, H, W) order to NHWC's (H, W, C).

    torch flattens NCHW feature maps channel-major, MLX ports flatten NHWC position-major; the
    weight (out, C*H*W) becomes (out, H*W*C) so both compute the same dot products.
    """
    out = weight.shape[0]
    if weight.shape != (out, channels * height * width):
        raise ValueError(f"expected a ({out}, {channels * height * width}) linear weight after the flatten, "
                         f"got {tuple(weight.shape)}")
    reordered = weight.reshape(out, channels, height, width).transpose(0, 2, 3, 1).reshape(out, -1)
    return np.ascontiguousarray(reordered)


def convert_state_dict(state_dict: Mapping[str, Any],
                       rename: Callable[[str], str | None] = lambda key: key) -> dict[str, np.ndarray]:
    """Rename keys (None drops one), drop BN counters, convert tensors to numpy in MLX layout."""
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        new_key = rename(key)
        if new_key is None:
            continue
        array = value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value, np.float32)
        out[new_key] = to_mlx_layout(array)
    return out


def convert_renamed(state_dict: Mapping[str, Any], prefixes: Mapping[str, str], model: str,
                    flattened: tuple[str, int, int, int] | None = None) -> dict[str, np.ndarray]:
    """``convert_state_dict`` for a port whose modules carry their own names (AlexNet, VGG).

    Each key's module prefix (``features.0`` of ``features.0.weight``) is renamed through
    ``prefixes``; an unknown one is an error naming ``model``. ``flattened`` = (key, channels,
    height, width) is the first Linear after the flatten, whose columns ``linear_after_nchw_flatten``
    reorders for NHWC (when absent, ``export_model`` reports the missing key).
    """
    def rename(key: str) -> str:
        prefix, _, param = key.rpartition(".")
        if prefix not in prefixes:
            raise ValueError(f"unexpected key '{key}' for a {model} state dict")
        return f"{prefixes[prefix]}.{param}"

    arrays = convert_state_dict(state_dict, rename)
    if flattened is not None and flattened[0] in arrays:
        key, channels, height, width = flattened
        arrays[key] = linear_after_nchw_flatten(arrays[key], channels, height, width)
    return arrays


def clean_checkpoint(obj: Any) -> dict[str, Any]:
    """Accept a bare state dict, a {"state_dict": ...}/{"model": ...} wrapper and DataParallel's "module." prefix."""
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError("the checkpoint holds no state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def imagenet_class_names() -> list[str]:
    """ImageNet's 1000 class names, as shipped inside torchvision (no download)."""
    from torchvision.models import GoogLeNet_Weights

    return list(GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_model(name: str, pretrained: bool, num_classes: int = 1000):
    """The torchvision model for ``name``: ImageNet weights (download) or random init."""
    import torchvision.models as tvm

    weights = {
        "googlenet": tvm.GoogLeNet_Weights.IMAGENET1K_V1,
        "inception_v3": tvm.Inception_V3_Weights.IMAGENET1K_V1,
        "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1,
        "vgg19": tvm.VGG19_Weights.IMAGENET1K_V1,
        "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
        "alexnet": tvm.AlexNet_Weights.IMAGENET1K_V1,
    }
    if name not in weights:
        raise ValueError(f"{name} has no torchvision counterpart")
    builder = getattr(tvm, name)
    if pretrained:
        # torchvision sets transform_input=True for GoogLeNet/Inception's ImageNet weights itself.
        return builder(weights=weights[name]).eval()
    extra = {}
    if name in ("googlenet", "inception_v3"):
        # Random init that behaves like the ImageNet weights (transform_input) without aux heads.
        extra = {"aux_logits": False, "transform_input": True, "init_weights": True}
    return builder(weights=None, num_classes=num_classes, **extra).eval()


def _check_fits(name: str, arrays: Mapping[str, np.ndarray], num_classes: int) -> None:
    """Refuse, before anything is written, a checkpoint that load_model would reject (e.g. vgg16 as vgg19)."""
    from mlx.utils import tree_flatten

    from .registry import build_model

    # Shapes of a lazily built model are known without allocating its parameters.
    expected = {k: tuple(v.shape) for k, v in tree_flatten(build_model(name, num_classes=num_classes).parameters())}
    missing = sorted(expected.keys() - arrays.keys())
    unexpected = sorted(arrays.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & arrays.keys() if tuple(arrays[k].shape) != expected[k])
    if missing or unexpected or wrong:
        details = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                   for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ValueError(f"the checkpoint is not a {name} state dict ({'; '.join(details)})")


def export_model(name: str, out: str | Path | None = None, from_pth: str | Path | None = None,
                 random_init: bool = False, seed: int = 0, num_classes: int = 1000) -> Path:
    """Write the MLX weights file for ``name``; return its path.

    Source: ``from_pth`` (a torch state dict), else random init (``random_init``), else the
    pretrained download (torchvision) / the installed package (efficientnet_lite0).
    """
    import torch

    spec = get_spec(name)
    arch = architecture_module(name)
    out = Path(out) if out is not None else default_weights_path(name)
    class_names: list[str] | None = None
    if from_pth is not None:
        state_dict = clean_checkpoint(torch.load(from_pth, map_location="cpu", weights_only=True))
        source = f"converted from {from_pth}"
    elif not spec.torchvision:
        state_dict, source = arch.reference_state_dict(random_init=random_init, seed=seed)
    elif random_init:
        torch.manual_seed(seed)
        state_dict = torchvision_model(name, pretrained=False, num_classes=num_classes).state_dict()
        source = f"random init (torch seed {seed})"
    else:
        state_dict = torchvision_model(name, pretrained=True).state_dict()
        source = spec.source
    arrays = getattr(arch, "convert_torch_state_dict", convert_state_dict)(state_dict)
    classifier = next((v for k, v in arrays.items() if k.endswith(arch.CLASSIFIER_WEIGHT)), None)
    classes = classifier.shape[0] if classifier is not None else num_classes
    _check_fits(name, arrays, int(classes))  # also names a missing classifier
    if classes == 1000:
        class_names = imagenet_class_names()
    metadata = {"architecture": name, "source": source, "num_classes": int(classes),
                "class_names": class_names, "config": {}}
    save_weights(out, arrays, metadata)
    return out


def export_main(name: str | None = None, argv: list[str] | None = None, choices: list[str] | None = None) -> int:
    """The command line shared by every export_*.py script."""
    parser = argparse.ArgumentParser(
        description=f"Export {name or '/'.join(choices or [])} weights to the DeepDream-MLX format "
                    "(default: download the pretrained ImageNet weights).")
    if choices:
        parser.add_argument("--model", choices=choices, default=choices[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-pth", metavar="PATH", help="convert a local torchvision-format state dict")
    source.add_argument("--random-init", action="store_true", help="export a randomly initialised model (tests)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for --random-init")
    parser.add_argument("--out", metavar="PATH", help="output file (default weights/<name>_mlx.npz)")
    args = parser.parse_args(argv)
    name = args.model if choices else name
    if args.from_pth and not Path(args.from_pth).is_file():
        parser.exit(2, f"error: --from-pth file {args.from_pth} not found\n")
    try:
        path = export_model(name, out=args.out, from_pth=args.from_pth, random_init=args.random_init, seed=args.seed)
    except KeyboardInterrupt:
        parser.exit(130, "interrupted; nothing written\n")
    except Exception as exc:
        spec = get_spec(name)
        hint = "" if args.from_pth or args.random_init else (
            f" Without internet access, download the torchvision checkpoint elsewhere and run "
            f"`{spec.exporter} --from-pth PATH`.")
        parser.exit(1, f"error: exporting {name} failed: {type(exc).__name__}: {exc}.{hint}\n")
    print(f"wrote {path}")
    return 0


