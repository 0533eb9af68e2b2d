"""Where DeepDream-MLX keeps what it measures or remembers between runs (``$XDG_CACHE_HOME``, else
``~/.cache``, under ``deepdream-mlx/``): memory profiles, notices already given. Deleting it is safe.

(``fastlayers/native`` keeps its build under the same folder; it cannot import this package.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from models.weights import atomic_write


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepdream-mlx"


def _notices_path() -> Path:
    return cache_dir() / "notices.json"


def seen(key: str) -> bool:
    """Whether the notice ``key`` was already given on this machine."""
    try:
        return key in json.loads(_notices_path().read_text())
    except (OSError, ValueError, TypeError):
        return False


def remember(key: str) -> None:
    """Note that the notice ``key`` was given (best effort: a read-only cache only means it is said again)."""
    path = _notices_path()
    try:
        keys = set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        keys = set()
    keys.add(key)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(sorted(keys))))
    except OSError:
        pass
