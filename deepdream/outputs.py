"""Output names, and the one rule for an output that already exists (single outputs and folders alike).

Names. A dream is ``<folder>/<input stem>_<model>[_<preset>].<ext>``: ``<model>`` is the model's
name (the ``--weights`` file's stem for other weights), ``_<preset>`` is added when ``--preset``
names a recipe other than the model's own (``--preset efficientnet_lite0`` on efficientnet_lite0
*is* the default dream), shortened to its variant when it is named after the model
(``--preset efficientnet_lite0_natural``: ``chelsea_efficientnet_lite0_natural.png``, never the
default dream's ``chelsea_efficientnet_lite0.png``), ``<stem>`` is ``dream`` for a dream from noise, and ``<ext>`` the input's own where its
format can carry a record (PNG, JPEG, WebP, TIFF), else ``.png``. A render is
``<objective>_<model>.png``; a sweep's items are ``NNNN_<label>.png`` in its folder.

Existing outputs. Every image the tool writes carries the record of what decided its pixels (the
model, weights, input, settings and seed; ``image_io.encode_image``). Before any work, each
output that already exists is compared with the record of the output about to be made:

* the same record: it is finished, and skipped; a rerun of the same command makes only what is
  missing. Without ``--seed`` any seed counts as the same (the run's seed was random anyway);
* another record, or none (not made by this tool, or a format without room for one): the command
  is refused in one line naming the difference, unless ``--overwrite``, which makes it again;
* a ``--save-every`` snapshot (a record marked partial): an unfinished dream, made again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from .image_io import output_suffix, read_image_record

#: Record field -> how the user names it, where that is not ``--<field>``.
FIELD_NAMES = {"model": "--model", "weights": "--weights", "input": "the input", "source": "the input",
               "version": "record version", "objective": "the objective", "items": "the items"}
#: Record fields that hold settings named like their flags: a difference inside one is shown per flag.
FLAG_GROUPS = ("dream", "motion", "render")
#: The record field of the seed (ignored when the user gave no --seed).
SEED = "seed"
#: A snapshot's record carries this field: an unfinished output.
PARTIAL = "partial"


def dream_name(stem: str, model_label: str, preset: str | None, architecture: str) -> str:
    """``<stem>_<model>[_<preset>]`` (see the module): the preset only when it is not the model's own
    recipe, and a preset named ``<model>_<variant>`` adds only ``_<variant>``."""
    if preset is None or preset == architecture:
        return f"{stem}_{model_label}"
    variant = preset[len(architecture) + 1:] if preset.startswith(architecture + "_") else preset
    return f"{stem}_{model_label}_{variant}"


def dream_output(folder: str | os.PathLike, input_path: str | os.PathLike | None, model_label: str,
                 preset: str | None, architecture: str) -> Path:
    """The default output of dreaming ``input_path`` (None: noise) with a model (see the module)."""
    stem = Path(input_path).stem if input_path is not None else "dream"
    return Path(folder) / f"{dream_name(stem, model_label, preset, architecture)}{output_suffix(input_path)}"


# -- records --------------------------------------------------------------------------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def show(value: object) -> str:
    """A record value as the user would type it."""
    if isinstance(value, list):
        return " ".join(show(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={show(v)}" for k, v in value.items() if k != "sha256") or "{}"
    return "default" if value is None else str(value)


def record_differences(old: Mapping[str, Any], new: Mapping[str, Any],
                       names: Mapping[str, str] = FIELD_NAMES) -> list[str]:
    """Readable differences between a stored and a requested record, e.g. ``--steps 5 -> 3``."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key in FLAG_GROUPS and isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diffs.append(f"{_flag(sub)} {show(a.get(sub))} -> {show(b.get(sub))}")
        else:
            diffs.append(f"{names.get(key, _flag(key))} {show(a)} -> {show(b)}")
    return diffs


def shown_differences(diffs: list[str], most: int = 4) -> str:
    return "; ".join(diffs[:most]) + ("; ..." if len(diffs) > most else "")


class State(Enum):
    MISSING = "missing"
    SAME = "same"            # finished with the requested settings: skipped
    PARTIAL = "partial"      # a snapshot of an unfinished dream: made again
    OTHER = "other"          # made with other settings, or not by this tool: refused without --overwrite


def output_state(path: Path, record: Mapping[str, Any], *, seed_given: bool) -> tuple[State, list[str]]:
    """Where ``path`` stands against the ``record`` of the output about to be made (see the module),
    with the differences when they are other settings."""
    if not path.exists():
        return State.MISSING, []
    stored = read_image_record(path)
    if stored is None:
        return State.OTHER, ["it was not made by this tool (or its format holds no record)"]
    if stored.get(PARTIAL):
        return State.PARTIAL, []
    if not seed_given:
        stored, record = {**stored, SEED: None}, {**record, SEED: None}
    diffs = record_differences(stored, dict(record))
    return (State.OTHER, diffs) if diffs else (State.SAME, [])


def record_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` as it reads back from a file (tuples as lists), so that the two compare equal."""
    import json

    return json.loads(json.dumps(record))


def file_sha256(path: str | os.PathLike) -> str:
    """An input's identity in a record (a file replaced under the same name is another input)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_seed() -> int:
    """A seed for a run without --seed, recorded with what it makes (a video's frames keep using it)."""
    return secrets.randbelow(2**31)
