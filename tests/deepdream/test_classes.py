"""Class names for --class: case-insensitive matching, closest names, index range, ambiguous names."""

from __future__ import annotations

import pytest

from deepdream.classes import class_index, imagenet_class_names
from deepdream.errors import DreamError

GOLDFISH, PIZZA = 1, 963

def test_class_names_match_case_insensitively_with_suggestions():
    names = list(imagenet_class_names())
    assert len(names) == 1000 and names[GOLDFISH] == "goldfish" and names[PIZZA] == "pizza"
    assert class_index(names, "GoldFish") == GOLDFISH
    assert class_index(names, "great_white_shark") == names.index("great white shark")
    assert class_index(names, "963") == PIZZA
    with pytest.raises(DreamError, match="unknown class 'goldfsh'; closest: goldfish"):
        class_index(names, "goldfsh")
    with pytest.raises(DreamError, match="out of range.*1000 classes"):
        class_index(names, "1000")
    with pytest.raises(DreamError, match="several classes"):
        class_index(names, "cardigan")
