"""convert/pth.py: torch checkpoints read without torch, byte for byte what ``torch.load`` gives."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from convert.pth import PthError, read_pth
from convert.torch_weights import package_weights_path
from models import get_facts


def assert_same(ours, theirs, where: str = "") -> None:
    """``ours`` (numpy) holds exactly ``theirs`` (torch): structure, dtypes, shapes and bytes."""
    if isinstance(theirs, torch.Tensor):
        expected = (theirs.float() if theirs.dtype == torch.bfloat16 else theirs).detach().numpy()
        assert isinstance(ours, np.ndarray), where
        assert (ours.dtype, ours.shape) == (expected.dtype, expected.shape), where
        assert ours.tobytes() == expected.tobytes(), where
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs), where
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}/{key}")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}/{i}")
    else:
        assert ours == theirs, where


def test_the_package_weights_are_torch_loads_bytes():
    """The efficientnet_lite0 package ships torch's pre-zip format: every tensor, byte for byte."""
    path = package_weights_path(get_facts("efficientnet_lite0").package)
    ours = read_pth(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert len(theirs) > 200
    assert_same(ours, theirs)


def awkward_checkpoint() -> dict:
    """Views, transposes, shared storages, every common dtype, empties, scalars, nesting."""
    torch.manual_seed(0)
    base = torch.randn(3, 4, 5)
    return {
        "plain": base, "transposed": base.transpose(0, 2), "strided": base[1:, ::2, 1], "shares": base[2],
        "half": torch.randn(3, 2).half(), "bfloat16": torch.randn(4).bfloat16(), "double": torch.randn(2).double(),
        "long": torch.arange(5), "int": torch.arange(3, dtype=torch.int32), "byte": torch.arange(4, dtype=torch.uint8),
        "bool": torch.tensor([True, False]), "scalar": torch.tensor(7.5), "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(torch.ones(2)), "nested": [base[0], (torch.arange(3), {"x": base[0, 0]})],
        "number": 5, "text": "x", "size": torch.Size([2, 3]), "none": None,
    }


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_saved_checkpoint_is_torch_loads_bytes(tmp_path, zipped):
    path = tmp_path / "awkward.pth"
    torch.save(awkward_checkpoint(), path, _use_new_zipfile_serialization=zipped)
    assert_same(read_pth(path), torch.load(path, weights_only=True))


class Payload:
    """Unpickling this runs code: what a checkpoint may not make the reader do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_objects_other_than_tensors_are_refused_not_run(tmp_path, zipped):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.ones(2), "payload": Payload(marker)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(PthError, match=r"holds a posix\.mkdir object.*torch\.save\(model\.state_dict\(\), PATH\)"):
        read_pth(path)
    assert not marker.exists()


def test_the_legacy_header_is_read_as_carefully(tmp_path):
    """The pickles before the object are checked the same way: a file that starts with a payload."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(PthError):
        read_pth(path)
    assert not marker.exists()


@pytest.mark.parametrize("content,expected", [(b"", "is an empty file"), (b"hello, not a checkpoint\n", "not a"),
                                              (b"PK\x03\x04 broken zip", "not a")])
def test_other_files_are_one_line_errors(tmp_path, content, expected):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(PthError, match=expected) as err:
        read_pth(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_truncated_checkpoint_is_refused(tmp_path, zipped):
    path = tmp_path / "model.pth"
    torch.save({"weight": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=zipped)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 1000])
    with pytest.raises(PthError):
        read_pth(path)
