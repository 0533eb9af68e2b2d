"""Which models exist, where their weights live, and how to load them.

Each architecture file declares its models as ``MODELS`` (a tuple of ``ModelFacts``); this file
only lists those files. Adding a model is one architecture file (plus its exporter and its test).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import mlx.core as mx

from fastlayers import native

from .base import DreamModel, ModelFacts, did_you_mean
from .weights import CHECKPOINT_KIND, read_weights

#: The architecture modules, in the order models are listed (--info, --model all, the benchmark).
ARCHITECTURES = (
    "models.googlenet",
    "models.vgg",
    "models.resnet",
    "models.alexnet",
    "models.inception_v3",
    "models.efficientnet_lite",
    "models.caffe_googlenet",
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR_ENV = "DEEPDREAM_WEIGHTS_DIR"


def _collect() -> dict[str, ModelFacts]:
    found: dict[str, ModelFacts] = {}
    for module in ARCHITECTURES:
        for facts in importlib.import_module(module).MODELS:
            if facts.name in found:
                raise RuntimeError(f"model '{facts.name}' is declared twice ({module})")
            found[facts.name] = facts
    return found


MODELS: dict[str, ModelFacts] = _collect()


class WeightsError(RuntimeError):
    """Weights are missing, unreadable or for another architecture; the message says what to run."""


def list_models() -> list[str]:
    return list(MODELS)


def get_facts(name: str) -> ModelFacts:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'.{did_you_mean(name, MODELS)} Available models: {', '.join(MODELS)}")
    return MODELS[name]


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV, PROJECT_ROOT / "weights"))


def default_weights_path(name: str) -> Path:
    return weights_dir() / f"{name}_mlx.npz"


def weights_available(name: str) -> bool:
    """True when the default weights exist or can be made here without a download (``convert.make_default_weights``)."""
    return default_weights_path(name).exists() or get_facts(name).offline


def missing_weights_error(name: str) -> WeightsError:
    """"No weights" as one line naming the exporter (and, for torchvision models, the offline way)."""
    facts = get_facts(name)
    local = (f" (or `{facts.exporter} --from-pth PATH` for a local checkpoint)" if facts.torchvision else
             f" (or `{facts.exporter} --from-caffemodel FILE` for the file you have)" if facts.caffe else "")
    return WeightsError(f"no weights for {name}: {default_weights_path(name)} is missing. Run `{facts.exporter}`{local}")


def build_model(name: str, num_classes: int = 1000, **config) -> DreamModel:
    """An architecture with freshly initialised parameters (no weights loaded)."""
    facts = get_facts(name)
    return facts.build(num_classes=num_classes, **{**facts.config, **config})


def checkpoint_weights(arrays: dict, meta: dict, path: Path) -> tuple[dict, dict]:
    """A training checkpoint read as the weights file its run will write: the model's arrays
    without the training-only heads, and the metadata dreaming needs (no colour matrix yet)."""
    arch = meta.get("architecture")
    if arch not in MODELS:
        raise WeightsError(f"{path} is a training checkpoint of an unknown model ({arch}); "
                           "give the .npz that train_dream.py wrote at the end of the run")
    training_only = MODELS[arch].aux_prefixes
    model = {k[len("model."):]: v for k, v in arrays.items()
             if k.startswith("model.") and not k[len("model."):].startswith(training_only)}
    position = f"after {meta.get('epoch')} epochs" + (f" and {meta['batch']} batches" if meta.get("batch") else "")
    dream_meta = {"architecture": arch, "num_classes": meta.get("num_classes", 1000),
                  "class_names": meta.get("class_names"), "config": meta.get("dream_config") or {},
                  "mean": meta.get("base_mean"), "std": meta.get("base_std"),
                  "source": f"training checkpoint {path} ({position}) of a run from {meta.get('origin')}"}
    return model, dream_meta


def check_weights_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path where a weights file is there to read; else ``WeightsError`` saying why."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' not found; check the path")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file '{path}' is an empty file (0 bytes); give a .npz written by an exporter "
                           "or train_dream.py")
    return path


def load_model(name: str | None = None, weights: str | os.PathLike | None = None) -> DreamModel:
    """Build a zoo model and load its weights.

    ``name`` may be omitted when ``weights`` is given (the file names its architecture).
    A train_dream.py checkpoint (``checkpoints/<run>/last.npz``) loads as the model it holds.
    Without ``weights`` the default file ``weights/<name>_mlx.npz`` is used; when it is missing
    this raises ``WeightsError`` naming the exporter. It never downloads or converts: the
    scripts decide that (``convert.make_default_weights``) and say so.
    """
    if weights is None:
        if name is None:
            raise ValueError("load_model needs a model name or a weights file")
        get_facts(name)
        path = default_weights_path(name)
        if not path.exists():
            raise missing_weights_error(name)
    else:
        path = check_weights_file(weights)
    try:
        arrays, meta = read_weights(path)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    if meta.get("kind") == CHECKPOINT_KIND:
        arrays, meta = checkpoint_weights(arrays, meta, path)
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
    if mx.default_device().type == mx.DeviceType.cpu:
        # The first use on a machine builds the native kernels (a minute or so): here, with a notice
        # of its own, rather than inside the first step under a progress bar that looks stuck.
        native.load()
    return model
