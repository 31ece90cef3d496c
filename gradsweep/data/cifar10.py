"""CIFAR-10 from a local copy in the standard python-pickle layout (``cifar-10-batches-py``).

The folder holds ``data_batch_1`` .. ``data_batch_5`` (training) and ``test_batch`` (used as the
validation set), each a pickled dict with ``b"data"`` (N x 3072 uint8, channel-major 32x32) and
``b"labels"``. Nothing is downloaded: the cluster may have no internet, and the researchers keep
one copy per machine. Images are normalised with the usual per-channel CIFAR-10 mean and std.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from gradsweep.data import Dataset

__all__ = ["ENV_VAR", "MEAN", "STD", "TRAIN_FILES", "TEST_FILE", "resolve_path", "load_cifar10"]

ENV_VAR = "GRADSWEEP_CIFAR10"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
_FOLDER = "cifar-10-batches-py"


def resolve_path(path: str | os.PathLike | None) -> Path:
    """The ``cifar-10-batches-py`` folder: ``path`` (the folder or its parent), else ``$GRADSWEEP_CIFAR10``.

    Raises ``FileNotFoundError`` naming what is missing and where it was looked for.
    """
    if path is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            raise FileNotFoundError(
                f"problem.data.source is 'cifar10' but no copy was named: set problem.data.path or "
                f"${ENV_VAR} to a '{_FOLDER}' folder (or its parent), or use source: synthetic"
            )
        path = env
    folder = Path(path).expanduser()
    if not (folder / TEST_FILE).exists() and (folder / _FOLDER).is_dir():
        folder = folder / _FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"problem.data.path: CIFAR-10 folder {str(folder)!r} does not exist")
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"problem.data.path: CIFAR-10 folder {str(folder)!r} lacks {', '.join(missing)} "
            f"(expected the python-pickle layout '{_FOLDER}')"
        )
    return folder


def _read(file: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(file, "rb") as fh:
        entry = pickle.load(fh, encoding="bytes")
    try:
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry.get(b"labels", entry.get(b"fine_labels")), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"CIFAR-10 file {str(file)!r} is not a pickled dict with b'data' and b'labels'") from err
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"CIFAR-10 file {str(file)!r}: expected data (N, 3072) and N labels, got {data.shape}")
    return data, labels


def _normalise(data: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(data).view(-1, 3, 32, 32).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_cifar10(path: str | os.PathLike | None = None) -> Dataset:
    """Training (the five data batches) and validation (the test batch) sets, normalised, float32."""
    folder = resolve_path(path)
    train = [_read(folder / name) for name in TRAIN_FILES]
    test_x, test_y = _read(folder / TEST_FILE)
    return Dataset(
        train_x=_normalise(np.concatenate([d for d, _ in train])),
        train_y=torch.from_numpy(np.concatenate([l for _, l in train])),
        val_x=_normalise(test_x),
        val_y=torch.from_numpy(test_y),
    )
