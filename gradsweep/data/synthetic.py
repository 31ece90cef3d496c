"""Synthetic image classification, so every XNOR experiment runs offline.

Images are i.i.d. N(0, 1) of shape 3 x S x S; labels are the argmax of a random full-precision
teacher CNN (conv 3->16, ReLU, 2x2 max-pool, conv 16->32, ReLU, global mean, linear 32->10)
drawn from the seed. The teacher's logits are centred per class over a calibration sample so
that the ten classes are roughly balanced (a raw random teacher prefers a few classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradsweep.data import Dataset
from gradsweep.seeding import generator

__all__ = ["Teacher", "make_teacher", "synthetic_dataset"]

NUM_CLASSES = 10


class Teacher:
    """The random labelling CNN; ``labels(x)`` is the argmax of its centred logits."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        self.w = weights
        self.centre = torch.zeros(NUM_CLASSES)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.conv2d(x, self.w["conv1"], padding=1))
        h = F.max_pool2d(h, 2) if min(h.shape[-2:]) >= 2 else h
        h = F.relu(F.conv2d(h, self.w["conv2"], padding=1))
        return h.mean(dim=(2, 3)) @ self.w["fc"].T - self.centre

    @torch.no_grad()
    def labels(self, x: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
        parts = [self.logits(x[i:i + chunk]).argmax(1) for i in range(0, len(x), chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def make_teacher(seed: int, image_size: int) -> Teacher:
    """The teacher of ``seed``, with He-initialised weights and per-class centring."""
    g = generator(seed, "synthetic_teacher")
    w = {
        "conv1": torch.randn(16, 3, 3, 3, generator=g) * (2.0 / 27) ** 0.5,
        "conv2": torch.randn(32, 16, 3, 3, generator=g) * (2.0 / 144) ** 0.5,
        "fc": torch.randn(NUM_CLASSES, 32, generator=g) * (1.0 / 32) ** 0.5,
    }
    teacher = Teacher(w)
    calib = torch.randn(2000, 3, image_size, image_size, generator=g)
    with torch.no_grad():
        teacher.centre = teacher.logits(calib).mean(0)
    return teacher


def synthetic_dataset(*, seed: int, train_size: int, val_size: int, image_size: int = 32) -> Dataset:
    """``train_size`` training and ``val_size`` validation images with the teacher's labels."""
    teacher = make_teacher(seed, image_size)
    train_x = torch.randn(train_size, 3, image_size, image_size, generator=generator(seed, "synthetic_train"))
    val_x = torch.randn(val_size, 3, image_size, image_size, generator=generator(seed, "synthetic_val"))
    return Dataset(train_x, teacher.labels(train_x), val_x, teacher.labels(val_x), NUM_CLASSES)
