"""Class names for ``--class``: the model's own (a fine-tuned weights file's ``class_names``), else
ImageNet's for a 1000-class model, from ``imagenet_classes.txt`` (written once from torchvision's
``GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"]``, so dreaming needs no torch)."""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

from models import DreamModel

from .errors import DreamError
from .objectives import layer_channels

IMAGENET_FILE = Path(__file__).with_name("imagenet_classes.txt")


@cache
def imagenet_class_names() -> tuple[str, ...]:
    return tuple(IMAGENET_FILE.read_text(encoding="utf-8").splitlines())


def class_names(model: DreamModel) -> list[str]:
    """The model's class names; ImageNet's when the weights file carries none but the model has 1000 classes."""
    if model.class_names:
        return list(model.class_names)
    count = layer_channels(model, ["logits"])["logits"]
    if count == len(imagenet_class_names()):
        return list(imagenet_class_names())
    raise DreamError(f"the {model.name} weights have {count} classes but no class names; use --class INDEX (0-{count - 1})")


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def class_index(names: list[str], spec: str) -> int:
    """``spec`` (an index, or a name matched case-insensitively, ``_``/``-`` as spaces) -> its index."""
    spec = spec.strip()
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < len(names):
            raise DreamError(f"class index {index} is out of range: this model has {len(names)} classes "
                             f"(0-{len(names) - 1}); or give a class name")
        return index
    keys = [_key(n) for n in names]
    matches = [i for i, k in enumerate(keys) if k == _key(spec)]
    if len(matches) > 1:
        listed = ", ".join(str(i) for i in matches)
        raise DreamError(f"'{spec}' names several classes ({listed}); give the index instead, e.g. --class {matches[0]}")
    if matches:
        return matches[0]
    close = difflib.get_close_matches(_key(spec), keys, n=5, cutoff=0.6)
    close += [k for k in keys if _key(spec) in k and k not in close][:5 - len(close)]
    hint = f"; closest: {', '.join(close)}" if close else "; give a name from the model's classes or an index"
    raise DreamError(f"unknown class '{spec}'{hint}")


def class_list(names: list[str], specs: list[str]) -> list[int]:
    """Several ``--class`` values -> their indices, in the order given, without repeats: ``all``,
    indices, ranges of indices (``0-7``) and names."""
    if [s.strip().lower() for s in specs] == ["all"]:
        return list(range(len(names)))
    chosen: list[int] = []
    for spec in specs:
        first, sep, last = spec.strip().partition("-")
        if sep and first.isdigit() and last.isdigit():
            low, high = int(first), int(last)
            if high < low:
                raise DreamError(f"--class range '{spec}' is empty; write it low-high, e.g. 0-7")
            class_index(names, str(high))   # out of range: the one-line error
            chosen.extend(range(low, high + 1))
        else:
            chosen.append(class_index(names, spec))
    return list(dict.fromkeys(chosen))
