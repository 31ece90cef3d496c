"""Image data for the XNOR-ResNet problem: CIFAR-10 from a local copy, or synthetic images.

:func:`load` turns the problem's ``data`` config into a :class:`Dataset` of normalised tensors;
:func:`augment` is the standard CIFAR training augmentation (4-pixel padded random crop and
horizontal flip), drawn from a given generator so pretraining stays deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

__all__ = ["Dataset", "load", "augment"]


@dataclass(frozen=True)
class Dataset:
    """Normalised images (N, 3, S, S) and integer labels (N,), split into train and validation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int = 10

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Dataset":
        return Dataset(
            self.train_x.to(device=device, dtype=dtype), self.train_y.to(device),
            self.val_x.to(device=device, dtype=dtype), self.val_y.to(device), self.num_classes,
        )


def load(cfg: Mapping[str, Any], *, seed: int, train: bool = True) -> Dataset:
    """The dataset of a canonical ``problem.data`` config, as float32 on the CPU.

    ``source: synthetic`` depends on ``seed`` (the teacher and the images); ``cifar10`` does not.
    ``train=False`` leaves the synthetic training set empty (a probe without pretraining never
    reads it, and drawing and labelling 10,000 images costs seconds per cell).
    """
    source = cfg["source"]
    if source == "synthetic":
        from gradsweep.data.synthetic import synthetic_dataset

        n_val = max(1000, int(cfg["batch_size"]) * int(cfg["batches"]))
        return synthetic_dataset(
            seed=seed, train_size=int(cfg["train_size"]) if train else 0, val_size=n_val,
            image_size=int(cfg["image_size"]),
        )
    if source == "cifar10":
        from gradsweep.data.cifar10 import load_cifar10

        return load_cifar10(cfg["path"])
    raise ValueError(f"problem.data.source: expected 'synthetic' or 'cifar10', got {source!r}")


def augment(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4) -> torch.Tensor:
    """Random crop of the ``pad``-padded image back to its size, and a random horizontal flip.

    One crop offset and one flip per image, all drawn from ``generator`` (on the CPU).
    """
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # (n, w)
    cols = torch.where(flip.to(x.device)[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # gather (n, c, h, w) from padded via advanced indexing on the spatial axes
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
