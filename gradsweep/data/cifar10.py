"""CIFAR-10 from a local copy, in either standard layout; reading it never runs code.

- ``cifar-10-batches-py``: ``data_batch_1`` .. ``data_batch_5`` (training) and ``test_batch``
  (used as the validation set), each a pickled dict with ``b"data"`` (N x 3072 uint8,
  channel-major 32x32) and ``b"labels"``.
- ``cifar-10-batches-bin``: ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``,
  plain bytes: per image one label byte, then its 3072 pixel bytes in the same order.

A pickle can name any importable function and have it called while it loads, so a crafted batch
file would run code on every worker that reads it. The python layout is therefore read by an
unpickler that knows exactly what the format holds (dicts, lists, bytes and str, ints, and numpy
arrays of integer dtypes, which it rebuilds itself with ``numpy.frombuffer`` instead of letting
numpy's pickle hooks run); anything else is a ``ValueError`` naming the file, raised before
anything it names is called.

Nothing is downloaded: the cluster may have no internet, and the researchers keep one copy per
machine. Images are normalised with the usual per-channel CIFAR-10 mean and std.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsweep.data import Dataset

__all__ = [
    "ENV_VAR", "MEAN", "STD", "TRAIN_FILES", "TEST_FILE", "BIN_TRAIN_FILES", "BIN_TEST_FILE",
    "resolve_path", "load_cifar10",
]

ENV_VAR = "GRADSWEEP_CIFAR10"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BIN_TRAIN_FILES = tuple(f"{name}.bin" for name in TRAIN_FILES)
BIN_TEST_FILE = f"{TEST_FILE}.bin"
_FOLDER = "cifar-10-batches-py"
_BIN_FOLDER = "cifar-10-batches-bin"
_PIXELS = 3 * 32 * 32
_CLASSES = 10


def _files(folder: Path) -> tuple[tuple[str, ...], str] | None:
    """The training files and the test file of the layout ``folder`` holds, or None."""
    if (folder / TEST_FILE).exists():
        return TRAIN_FILES, TEST_FILE
    if (folder / BIN_TEST_FILE).exists():
        return BIN_TRAIN_FILES, BIN_TEST_FILE
    return None


def resolve_path(path: str | os.PathLike | None) -> Path:
    """The CIFAR-10 folder: ``path`` (the folder or its parent), else ``$GRADSWEEP_CIFAR10``.

    Either layout, ``cifar-10-batches-py`` or ``cifar-10-batches-bin`` (the python one first when
    a parent holds both). Raises ``FileNotFoundError`` naming what is missing and where it was
    looked for.
    """
    if path is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            raise FileNotFoundError(
                f"problem.data.source is 'cifar10' but no copy was named: set problem.data.path or "
                f"${ENV_VAR} to a '{_FOLDER}' or '{_BIN_FOLDER}' folder (or its parent), or use source: synthetic"
            )
        path = env
    folder = Path(path).expanduser()
    if _files(folder) is None:
        for sub in (_FOLDER, _BIN_FOLDER):
            if (folder / sub).is_dir():
                folder = folder / sub
                break
    if not folder.is_dir():
        raise FileNotFoundError(f"problem.data.path: CIFAR-10 folder {str(folder)!r} does not exist")
    binary = _files(folder) == (BIN_TRAIN_FILES, BIN_TEST_FILE) or folder.name == _BIN_FOLDER
    train, test = (BIN_TRAIN_FILES, BIN_TEST_FILE) if binary else (TRAIN_FILES, TEST_FILE)
    missing = [name for name in (*train, test) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"problem.data.path: CIFAR-10 folder {str(folder)!r} lacks {', '.join(missing)} "
            f"(expected the python-pickle layout '{_FOLDER}' or the binary layout '{_BIN_FOLDER}')"
        )
    return folder


# ---------------------------------------------------------------------------------------------
# the python layout: a restricted unpickler


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a CIFAR-10 batch never holds."""


# dtypes a batch's arrays may have: bytes of pixels, integer labels
_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})
_ORDERS = frozenset({"<", ">", "|", "="})


def _text(value: Any) -> str | None:
    """``value`` as str: pickles written by Python 2 and read with ``encoding="bytes"`` hold bytes."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


class _Dtype:
    """Stands for ``numpy.dtype(code)`` in the pickle: integer codes only, no fields, no objects."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        text = _text(code)
        if text is None or text.lstrip("<>|=") not in _DTYPES:
            raise _Refused(f"an array of dtype {code!r} (a CIFAR-10 batch holds integer arrays only)")
        self.code, self.order = text.lstrip("<>|="), (text[0] if text[0] in _ORDERS else "|")

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byte order, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or any(v is not None for v in state[2:5]):
            raise _Refused("a structured or sub-array dtype (a CIFAR-10 batch holds plain integer arrays)")
        order = _text(state[1])
        if order not in _ORDERS:
            raise _Refused(f"a dtype byte order {state[1]!r}")
        self.order = order

    def numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype.newbyteorder(self.order) if self.order in "<>" and dtype.itemsize > 1 else dtype


class _Array:
    """Stands for a numpy array in the pickle; :meth:`numpy` rebuilds it from its bytes."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.dtype: _Dtype | None = None
        self.fortran = False
        self.raw = b""

    def __setstate__(self, state: Any) -> None:
        # ndarray's state: (version, shape, dtype, is_fortran, raw bytes)
        if not isinstance(state, tuple) or len(state) != 5:
            raise _Refused("an array state that is not (version, shape, dtype, fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        self._set(shape, dtype, bool(fortran), raw)

    def _set(self, shape: Any, dtype: Any, fortran: bool, raw: Any) -> None:
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise _Refused(f"an array shape {shape!r}")
        if not isinstance(dtype, _Dtype):
            raise _Refused("an array whose dtype is not a plain integer dtype")
        if isinstance(raw, (bytearray, memoryview, pickle.PickleBuffer)):
            raw = bytes(raw)
        if not isinstance(raw, bytes):
            raise _Refused("an array whose data are not bytes")
        if len(raw) != math.prod(shape) * dtype.numpy().itemsize:
            raise _Refused(f"an array of shape {shape} whose data hold {len(raw)} bytes")
        self.shape, self.dtype, self.fortran, self.raw = shape, dtype, fortran, raw

    def numpy(self) -> np.ndarray:
        assert self.shape is not None and self.dtype is not None
        flat = np.frombuffer(self.raw, dtype=self.dtype.numpy())
        return flat.reshape(self.shape, order="F" if self.fortran else "C").copy()  # writable, for torch


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _Array:
    """numpy's ``_reconstruct(ndarray, (0,), b"b")``: an empty array that the state then fills."""
    if subtype is not np.ndarray:
        raise _Refused("an array of a class other than numpy.ndarray")
    return _Array()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    """numpy's pickle protocol 5 form of an array."""
    array = _Array()
    array._set(shape, dtype, _text(order) == "F", buffer)
    return array


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``: how Python 3 writes bytes at pickle protocols below 3."""
    if not isinstance(text, str) or codecs.lookup(str(encoding)).name != "iso8859-1":
        raise _Refused("a codecs call other than latin-1 bytes")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch and nothing else: every global outside :data:`_ALLOWED` is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}, which a CIFAR-10 batch never holds") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def _get(entry: dict, key: str) -> Any:
    for k in (key.encode(), key):
        if k in entry:
            return entry[k]
    return None


def _as_array(value: Any, file: Path, what: str) -> np.ndarray:
    if isinstance(value, _Array):
        return value.numpy()
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return np.asarray(value, dtype=np.int64)
    raise ValueError(f"CIFAR-10 file {str(file)!r}: {what} is a {type(value).__name__}, expected an array or a list of ints")


def _read_pickle(file: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = file.read_bytes()
    try:
        entry = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as err:
        raise ValueError(
            f"CIFAR-10 file {str(file)!r} is not a CIFAR-10 batch: it asks for {err}; refused, nothing in it was run"
        ) from None
    except Exception as err:  # truncated or not a pickle at all: the stdlib raises many types
        raise ValueError(f"CIFAR-10 file {str(file)!r} is not a readable pickle: {type(err).__name__}: {err}") from None
    if not isinstance(entry, dict) or not all(isinstance(k, (bytes, str)) for k in entry):
        raise ValueError(f"CIFAR-10 file {str(file)!r} is not a pickled dict with b'data' and b'labels'")
    data, labels = _get(entry, "data"), _get(entry, "labels")
    if labels is None:
        labels = _get(entry, "fine_labels")
    if data is None or labels is None:
        raise ValueError(f"CIFAR-10 file {str(file)!r} is not a pickled dict with b'data' and b'labels'")
    data, labels = _as_array(data, file, "data"), _as_array(labels, file, "labels")
    if data.dtype != np.uint8:
        raise ValueError(f"CIFAR-10 file {str(file)!r}: data has dtype {data.dtype}, expected uint8")
    return data, labels.astype(np.int64)


def _read_binary(file: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(file, dtype=np.uint8)
    if raw.size == 0 or raw.size % (_PIXELS + 1):
        raise ValueError(
            f"CIFAR-10 file {str(file)!r} holds {raw.size} bytes, not a whole number of "
            f"{_PIXELS + 1}-byte records (a label byte and {_PIXELS} pixels)"
        )
    records = raw.reshape(-1, _PIXELS + 1)
    return np.ascontiguousarray(records[:, 1:]), records[:, 0].astype(np.int64)


def _read(file: Path) -> tuple[np.ndarray, np.ndarray]:
    data, labels = _read_binary(file) if file.suffix == ".bin" else _read_pickle(file)
    if data.ndim != 2 or data.shape[1] != _PIXELS or labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(
            f"CIFAR-10 file {str(file)!r}: expected data (N, {_PIXELS}) and N labels, "
            f"got {data.shape} and {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= _CLASSES):
        raise ValueError(
            f"CIFAR-10 file {str(file)!r}: labels must be 0..{_CLASSES - 1}, got {labels.min()}..{labels.max()}"
        )
    return data, labels


def _normalise(data: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(data).view(-1, 3, 32, 32).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_cifar10(path: str | os.PathLike | None = None) -> Dataset:
    """Training (the five data batches) and validation (the test batch) sets, normalised, float32."""
    folder = resolve_path(path)
    files = _files(folder)
    assert files is not None  # resolve_path checked the test file is there
    train_files, test_file = files
    train = [_read(folder / name) for name in train_files]
    test_x, test_y = _read(folder / test_file)
    return Dataset(
        train_x=_normalise(np.concatenate([d for d, _ in train])),
        train_y=torch.from_numpy(np.concatenate([l for _, l in train])),
        val_x=_normalise(test_x),
        val_y=torch.from_numpy(test_y),
    )
