"""The ``weights/<name>_mlx.npz`` format: MLX-layout arrays plus JSON metadata.

Keys are the MLX parameter paths (``inception3a.branch1.conv.weight``); conv kernels are
already OHWI. The metadata travels in the same file under ``__metadata__`` so a fine-tuned
checkpoint carries its class names, normalisation and colour matrix with it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

METADATA_KEY = "__metadata__"
FORMAT_VERSION = 1
#: ``metadata["kind"]`` of train_dream.py's checkpoints: the model's arrays under ``model.``, the
#: optimizer's under ``optimizer.``, and the run's facts (``architecture``, ``class_names``,
#: ``dream_config``, ``base_mean``/``base_std``) in the metadata.
CHECKPOINT_KIND = "deepdream-mlx training checkpoint"


def atomic_write(path: str | os.PathLike, write: Any, suffix: str = "") -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; give the file the permissions a plain open() would (0666 minus umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    metadata = {"format_version": FORMAT_VERSION, **metadata}
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload[METADATA_KEY] = np.array(json.dumps(metadata))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append another ".npz"
            np.savez(f, **payload)

    atomic_write(path, write, suffix=".npz")


def read_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != METADATA_KEY}
        metadata = json.loads(str(data[METADATA_KEY])) if METADATA_KEY in data.files else {}
    return arrays, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data[METADATA_KEY])) if METADATA_KEY in data.files else {}
