"""``tiny_bnn``: a small binary CNN for the ``torch_module`` problem, written as users write them.

A full-precision stem, ``depth`` binary 3x3 convolutions (XNOR-Net weights ``alpha * sign(W)``)
each followed by BatchNorm and ``sign``, global average pooling and a full-precision classifier.
The binary parts are gradsweep's quantiser modules (:mod:`gradsweep.nn`), so every estimator
applies: the STE family and sr-STE through their surrogates, CDG and NES on the plain step.

    problem:
      kind: torch_module
      model: {kind: tiny_bnn, width: 8, depth: 2}
      data: {kind: synthetic_images, image_size: 8, batch_size: 64, batches: 2}
    params: [conv:2]          # the first binary conv (conv:1 is the stem)
"""

from __future__ import annotations

from torch import nn

from gradsweep.declare import Param, ProblemCost, model, positive_int
from gradsweep.nn import BinaryConv2d, Sign


class TinyBNN(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2, padding: int = 1, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), Sign()]
        for _ in range(depth):
            layers += [BinaryConv2d(width, width, 3, padding=padding, bias=False), nn.BatchNorm2d(width), Sign()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _cost(params: dict) -> ProblemCost:
    """One 8x8 image: the convolutions' multiply-adds (for plan's estimate and layer checks)."""
    w, depth, pixels = params["width"], params["depth"], 8 * 8  # an upper bound without padding
    convs = [3 * w * 9] + [w * w * 9] * depth
    return ProblemCost(eval_flops=2.0 * pixels * sum(convs), params=sum(convs) + 10 * w + 10,
                       layers={"conv": convs, "linear": [10 * w]}, memory_bytes=4.0 * pixels * w * (3 * depth + 3))


KIND = model(
    "tiny_bnn",
    impl=f"{__name__}:TinyBNN",
    params={
        "width": positive_int("channels of every convolution", 8),
        "depth": positive_int("binary 3x3 convolutions", 2),
        "padding": Param("int", 1, "zero padding of the binary convolutions", low=0),
    },
    doc="fp stem, `depth` binary 3x3 convs with BN and sign, average pooling, fp classifier",
    cost=_cost,
)
