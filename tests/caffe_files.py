"""Test-only writers of the files users hold for the 2015 models: ``.caffemodel`` in both encodings
and neural-dream's ``.pth`` layout.

The caffemodel writer encodes the protobuf wire format by hand from caffe.proto's field numbers,
independently of the reader (``models.caffe``, which uses the protobuf package), and writes a
whole deploy net: weightless layers (ReLU, pooling, LRN, concat, dropout, softmax) and layer
parameters the reader must skip, as Caffe does.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# -- protobuf wire format ------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode())


def _packed_floats(field: int, values: np.ndarray) -> bytes:
    return _bytes(field, np.ascontiguousarray(values, "<f4").tobytes())


# -- Caffe messages ------------------------------------------------------------------------------------

def _blob_v2(array: np.ndarray) -> bytes:
    shape = b"".join(_varint(d) for d in array.shape)
    return _bytes(7, _bytes(1, shape)) + _packed_floats(5, array.ravel())


def _blob_v1(array: np.ndarray) -> bytes:
    dims = (1,) * (4 - array.ndim) + tuple(array.shape)  # legacy 4-D: (1, 1, out, in), (1, 1, 1, out)
    return b"".join(_int(i + 1, d) for i, d in enumerate(dims)) + _packed_floats(5, array.ravel())


#: V1LayerParameter.LayerType numbers (caffe.proto).
_V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "LRN": 15, "Concat": 3,
             "Dropout": 6, "Softmax": 20, "Input": 5}


def _layer(name: str, kind: str, blobs: list[np.ndarray], encoding: str) -> bytes:
    if encoding == "v2":
        body = _str(1, name) + _str(2, kind) + _str(3, "bottom") + _str(4, name)
        body += b"".join(_bytes(7, _blob_v2(b)) for b in blobs)
        if kind == "Convolution":  # convolution_param { num_output } : to be skipped
            body += _bytes(106, _int(1, blobs[0].shape[0]))
        return _bytes(100, body)
    body = _str(2, "bottom") + _str(3, name) + _str(4, name) + _int(5, _V1_TYPES[kind])
    body += b"".join(_bytes(6, _blob_v1(b)) for b in blobs)
    if kind == "Convolution":  # V1 convolution_param = 10
        body += _bytes(10, _int(1, blobs[0].shape[0]))
    return _bytes(2, body)


def write_caffemodel(path: Path, layers: Mapping[str, tuple[str, list[np.ndarray]]], encoding: str = "v2",
                     net_name: str = "GoogleNet", weightless: bool = True) -> Path:
    """``layers``: Caffe layer name -> (type, [weight, bias]) in Caffe's layout; ``encoding`` "v2" or "v1".
    With ``weightless`` each weighted layer is followed by a ReLU, and the net starts with an input
    layer and ends with dropout and softmax, as a deploy net does."""
    out = _str(1, net_name)
    if weightless:
        out += _layer("data", "Input", [], encoding)
    for name, (kind, blobs) in layers.items():
        out += _layer(name, kind, [np.asarray(b, np.float32) for b in blobs], encoding)
        if weightless:
            out += _layer(f"{name}_relu", "ReLU", [], encoding)
            if name.endswith("/pool_proj"):
                out += _layer(name.replace("pool_proj", "output"), "Concat", [], encoding)
    if weightless:
        out += _layer("pool5/drop_7x7_s1", "Dropout", [], encoding) + _layer("prob", "Softmax", [], encoding)
    path.write_bytes(out)
    return path


def caffe_layers_from_neural_dream(state_dict: Mapping[str, object]) -> dict[str, tuple[str, list[np.ndarray]]]:
    """neural-dream's keys back to Caffe layer names (``inception_4c_3x3`` -> ``inception_4c/3x3``), numpy blobs."""
    layers = {}
    for key in dict.fromkeys(k.rsplit(".", 1)[0] for k in state_dict):
        weight = np.asarray(state_dict[f"{key}.weight"], np.float32)
        bias = np.asarray(state_dict[f"{key}.bias"], np.float32)
        base = key[:-2] if key.endswith("_1") else key
        prefix, _, rest = base.partition("_")          # conv1 | 7x7_s2, loss3 | classifier
        if prefix == "inception":                      # inception | 4c_3x3_reduce
            block, _, rest = rest.partition("_")
            prefix = f"inception_{block}"
        layers[f"{prefix}/{rest}"] = ("Convolution" if weight.ndim == 4 else "InnerProduct", [weight, bias])
    return layers


def vgg_like_layers(seed: int = 0) -> dict[str, tuple[str, list[np.ndarray]]]:
    """A small stand-in for another network's caffemodel (VGG's layer names)."""
    rng = np.random.default_rng(seed)
    return {name: ("Convolution", [rng.standard_normal((8, 3, 3, 3), np.float32), np.zeros(8, np.float32)])
            for name in ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1")}
