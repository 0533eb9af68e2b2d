"""The README and docs/ are the user's guide: every flag of every script is in them (``--help`` alone
is not where a user learns that a flag exists)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("dream", "dream_video", "train_dream", "calc_cm", "prepare_dataset")


def guide() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_is_documented(script):
    parser = importlib.import_module(script).build_parser()
    flags = [flag for action in parser._actions for flag in action.option_strings
             if flag.startswith("--") and flag != "--help"]
    text = guide()
    missing = [flag for flag in flags if not re.search(re.escape(flag) + r"(?![\w-])", text)]
    assert not missing, f"{script}.py flags missing from README.md and docs/: {missing}"


def test_the_models_table_lists_logits():
    """``logits`` is a layer of every model (``--layers logits``, ``--class``): the table shows it."""
    import models

    section = guide().split("## Models", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert any("`logits`" in row for row in rows)
    for name in models.list_models():
        models.build_model(name).check_layers(["logits"])      # what the row promises
