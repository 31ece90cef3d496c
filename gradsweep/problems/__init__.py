"""The built-in problems, activations and surrogate derivatives, declared once (torch-free).

Each declaration below is the one place its kind is listed: its spec parameters, its
implementation (``"module:attribute"``, imported when a cell runs), and for problems what
``plan`` needs to size a cell without building it (:class:`~gradsweep.declare.ProblemCost`:
the cost of one loss evaluation, the layers that ``params:`` selectors count, the memory).
:func:`build_problem` builds the problem of a config; the interface is
:class:`gradsweep.problems.base.Problem`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from gradsweep.declare import (
    REQUIRED,
    Choice, Group, OneOf, Param, ProblemCost, activation, dataset, positive_float, positive_int, problem,
    surrogate,
)

__all__ = ["KINDS", "TOY_PRETRAIN", "XNOR_PRETRAIN", "build_problem", "Problem", "Surrogate", "Point", "Batch", "straight_through"]

_OPTIMIZER = Choice("optimizer", "adam", "optimizer", with_params=False)

_PLATEAU = {"until": ("plateau",)}
#: the stop rule of a pretraining, shared by every problem that pretrains ("until the loss stops
#: falling"); ``until: steps`` (fixed length) is how pretraining worked before the rule existed
_STOP_RULE: dict[str, Param] = {
    "until": Param(
        "str", "steps", "steps: train exactly `steps` steps; plateau: until the held-out loss stops falling",
        choices=("steps", "plateau"), introduced="steps",
    ),
    "patience": positive_int("plateau: held-out evaluations without improvement before stopping", 5, when=_PLATEAU),
    "min_delta": Param(
        "float", 0.01, "plateau: an evaluation improves when its loss is below best * (1 - min_delta) "
        "(relative, so one value fits every loss scale)", low=0.0, when=_PLATEAU,
    ),
    "max_steps": positive_int("plateau: stop here even if the loss still falls", 20000, when=_PLATEAU),
}

# ---------------------------------------------------------------------------------------------
# The BinaryDuo toy


def _toy_cost(cfg: Mapping[str, Any]) -> ProblemCost:
    d, depth = int(cfg["dim"]), int(cfg["depth"])
    data = cfg["data"]
    sizes = [d * d] * (depth - 1) + [d]
    params = sum(sizes)
    batch = int(data["batch_size"])
    pretrain = cfg.get("pretrain")
    pretrain_flops = 3.0 * 2.0 * params * int(pretrain["steps"]) * int(pretrain["batch_size"]) if pretrain else 0.0
    return ProblemCost(
        eval_flops=2.0 * params * batch,
        params=params,
        batches=int(data["batches"]),
        layers={"linear": sizes},
        names={f"fc{i + 1}": s for i, s in enumerate(sizes)},
        pretrain_flops=pretrain_flops,
        # the probe batches (x, y), a forward's activations, and the batched-evaluation budget
        memory_bytes=8.0 * batch * (d + 1) * int(data["batches"]) + 8.0 * batch * d * depth + (64 << 20),
    )


TOY_PRETRAIN = Group(
    {
        **_STOP_RULE,
        "steps": positive_int("update steps of vanilla (clipped) STE training", when={"until": ("steps",)}),
        "eval_every": positive_int("plateau: steps between evaluations on the held-out batch", 100, when=_PLATEAU),
        "batch_size": positive_int("fresh N(0, 1) inputs per step", 16000),
        "lr": positive_float("learning rate", 0.01),
        "optimizer": _OPTIMIZER,
    },
    doc="train the student with vanilla STE before measuring; null: the raw student",
    nullable=True,
    default=None,
)

# ---------------------------------------------------------------------------------------------
# Rosenbrock


def _rosenbrock_n_even(cfg: Mapping[str, Any]) -> str | None:
    if cfg["variant"] == "pairs" and cfg["n"] % 2:
        return f"n must be even for variant pairs (x_(2i-1), x_(2i)), got n = {cfg['n']}"
    return None


def _rosenbrock_x0_length(cfg: Mapping[str, Any]) -> str | None:
    x0 = cfg["x0"]
    if isinstance(x0, list) and len(x0) != cfg["n"]:
        return f"x0 must have n = {cfg['n']} numbers, got {len(x0)}"
    return None


def _rosenbrock_cost(cfg: Mapping[str, Any]) -> ProblemCost:
    n = int(cfg["n"])
    return ProblemCost(eval_flops=4.0 * n, params=n, names={"x": n}, memory_bytes=64.0 * n)


# ---------------------------------------------------------------------------------------------
# The thin XNOR-ResNet-18


def _xnor_conv_sizes(c: int) -> list[int]:
    """Weights of the 16 binary 3x3 convs of blocks [2, 2, 2, 2], stage widths c, 2c, 4c, 8c."""
    sizes = []
    for j in range(16):
        width = c * 2 ** (j // 4)
        fan_in = width // 2 if j in (4, 8, 12) else width
        sizes.append(width * fan_in * 9)
    return sizes


def _xnor_cost(cfg: Mapping[str, Any]) -> ProblemCost:
    c, data = int(cfg["channels"]), cfg["data"]
    side = int(data["image_size"])
    scale = (c / 64.0) ** 2 * (side / 32.0) ** 2
    per_image = 1.1e9 * scale  # ResNet-18 at c = 64 on 32x32 images: ~1.1 GFLOP a forward
    pretrain = cfg.get("pretrain")
    batch = int(data["batch_size"])
    images = int(data["train_size"]) if pretrain or data["source"] == "synthetic" else 60000
    return ProblemCost(
        eval_flops=per_image * batch,
        params=int(11e6 * (c / 64.0) ** 2),
        batches=int(data["batches"]),
        layers={"conv": _xnor_conv_sizes(c)},
        cap=(cfg.get("coords") or {}).get("sample"),
        pretrain_flops=3.0 * per_image * int(pretrain["steps"]) * int(pretrain["batch_size"]) if pretrain else 0.0,
        # the images, and a forward's activations (~ 40 maps of c x side^2 per image, float32)
        memory_bytes=4.0 * images * 3 * side * side + 4.0 * 40 * c * side * side * batch * 4 + (256 << 20),
    )


XNOR_PRETRAIN = Group(
    {
        **_STOP_RULE,
        "steps": positive_int("optimizer steps", when={"until": ("steps",)}),
        "batch_size": positive_int("images per step", 128),
        "lr": positive_float("initial learning rate", 0.01),
        "optimizer": _OPTIMIZER,
        "weight_decay": Param("float", 0.0, "weight decay", low=0.0),
        "schedule": Param("str", "cosine", "lr schedule", choices=("constant", "cosine")),
        "checkpoint_every": positive_int("steps between resumable checkpoints", 200),
        "augment": Param("bool", False, "random crop and flip while training"),
    },
    doc="STE pretraining of the network; null: the network as initialised",
    nullable=True,
    default=None,
)

# ---------------------------------------------------------------------------------------------
# Any PyTorch module (models and data from plugins)


def _torch_module_cost(cfg: Mapping[str, Any]) -> ProblemCost:
    """From the model kind's own cost model where it declares one (``cost(params) ->
    ProblemCost`` of one sample), else a rough 1 MFLOP per sample; layers unknown before the
    module is built (a selector is then checked by the cell)."""
    from gradsweep.registry import registry

    data = cfg["data"]
    batch, batches = int(data.get("batch_size", 1)), int(data.get("batches", 1))
    model = cfg["model"]
    declared = registry().kind("model", model["kind"]).cost
    if declared is None:
        return ProblemCost(eval_flops=1e6 * batch, params=100_000, batches=batches, memory_bytes=(256 << 20))
    one = declared({k: v for k, v in model.items() if k != "kind"})
    return ProblemCost(eval_flops=one.eval_flops * batch, params=one.params, batches=batches, layers=one.layers,
                       names=one.names, memory_bytes=one.memory_bytes * batch + (256 << 20))


_BATCHES = {
    "batch_size": positive_int("samples per probe batch", 32),
    "batches": positive_int("probe batches, each drawn from the seed", 2),
}

# ---------------------------------------------------------------------------------------------
# The declarations

KINDS = [
    problem(
        "toy_mlp", impl="gradsweep.problems.toy_mlp:build", cost=_toy_cost,
        doc="BinaryDuo teacher/student MLP on N(0, 1) inputs, MSE loss",
        params={
            "dim": positive_int("width d of every hidden layer and of the input ('num_dim')", 8),
            "depth": Param("int", 3, "number of linear layers (d -> d -> ... -> 1)", low=2),
            "activation": Choice("activation", "binary", "activation of the student", with_params=False),
            "teacher_activation": Choice(
                "activation", None, "activation of the teacher; null: the same as the student's",
                with_params=False, nullable=True,
            ),
            "data": Group(
                {
                    "batch_size": positive_int("inputs per probe batch", 16000),
                    "batches": positive_int("probe batches, each drawn from the seed", 10),
                }
            ),
            "pretrain": TOY_PRETRAIN,
            "init": Param(
                "str", "normal", "weights of teacher and student: normal = N(0, 1/fan_in); torch_default = "
                "nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the notes' (sqrt(3) smaller)",
                choices=("normal", "torch_default"), introduced="normal",
            ),
        },
    ),
    problem(
        "rosenbrock", impl="gradsweep.problems.rosenbrock:build", cost=_rosenbrock_cost, dtype="float64",
        doc="Rosenbrock function, a full-precision sanity check",
        params={
            "variant": Param("str", "pairs", "pairs: uncoupled pairs; chain: coupled", choices=("pairs", "chain")),
            "n": Param("int", 100, "dimension (even for pairs)", low=2),
            "x0": Param("x0", {"randint": [-10, 10]}, "start: a list of n numbers or {randint: [lo, hi]}"),
        },
        checks=(_rosenbrock_n_even, _rosenbrock_x0_length),
    ),
    problem(
        "xnor_resnet18", impl="gradsweep.problems.xnor_resnet:build", cost=_xnor_cost,
        doc="thin XNOR-ResNet-18 (basic blocks [2, 2, 2, 2]) on CIFAR-10 or synthetic images",
        params={
            "channels": positive_int("initial channel count c (stage widths c, 2c, 4c, 8c)", 8),
            "weights": Param("str", "binary", "binary: sign(W) * mean|W| per output channel; fp", choices=("binary", "fp")),
            "ste": Choice("surrogate", "clipped", "surrogate of the binary activation", with_params=False),
            "bn": Param("str", "running", "BN statistics during the probe: running (eval) or batch", choices=("running", "batch")),
            "data": Group(
                {
                    "source": Param("str", "synthetic", "synthetic (offline) or cifar10 (a local copy)", choices=("synthetic", "cifar10")),
                    "path": Param("str", None, "cifar-10-batches-py folder; null: $GRADSWEEP_CIFAR10", nullable=True),
                    "batch_size": positive_int("images per probe batch", 128),
                    "batches": positive_int("probe batches", 10),
                    "image_size": positive_int("side of the (synthetic) images", 32),
                    "train_size": positive_int("synthetic training images", 10000),
                }
            ),
            "pretrain": XNOR_PRETRAIN,
            "coords": Group(
                {
                    "sample": Param(
                        "int", None, "estimate K seeded coordinates of each layer with more than K weights "
                        "(the rest frozen; every estimator sees the same subset); null: every coordinate",
                        low=1, nullable=True,
                    ),
                }
            ),
        },
    ),
    problem(
        "torch_module", impl="gradsweep.problems.torch_module:build_declared", cost=_torch_module_cost,
        doc="any torch.nn.Module from a plugin's model factory, with its binary units marked by "
            "gradsweep.nn's quantiser modules (docs/plugins.md)",
        params={
            "model": OneOf("model", doc="the module factory (a model kind from a plugin) and its parameters"),
            "data": OneOf("dataset", doc="the probe's batches: a dataset kind and its parameters"),
            "loss": Param("str", "auto", "auto: cross-entropy for class labels, else MSE",
                          choices=("auto", "cross_entropy", "mse")),
        },
    ),
    dataset(
        "synthetic_images", impl="gradsweep.problems.torch_module:builtin_batches",
        doc="N(0, 1) images labelled by a random teacher CNN (10 classes)",
        params={**_BATCHES, "image_size": positive_int("side of the images (3 channels)", 8)},
    ),
    dataset(
        "gaussian", impl="gradsweep.problems.torch_module:builtin_batches",
        doc="x ~ N(0, I) of the given shape; targets: a second module from the same factory (regression)",
        params={**_BATCHES, "shape": Param("int_list", REQUIRED, "the input shape without the batch axis, e.g. [16]")},
    ),
    # -- activations (the forward of a step unit) -------------------------------------------
    activation("fp", impl="gradsweep.problems.quantizers:identity", doc="full precision: q(x) = x"),
    activation("binary", impl="gradsweep.problems.quantizers:BINARY", doc="sign, sign(0) = +1: {-1, +1}"),
    activation("ternary", impl="gradsweep.problems.quantizers:TERNARY", doc="{-1, 0, +1}, thresholds +-0.5"),
    activation("2bit", impl="gradsweep.problems.quantizers:TWO_BIT", doc="4 uniform levels on [-1, 1]"),
    # -- surrogate derivatives (the backward of a step unit, for the STE family) ------------
    surrogate("identity", impl="gradsweep.problems.surrogates:Identity", doc="g'(x) = 1 (plain STE)"),
    surrogate(
        "clipped", impl="gradsweep.problems.surrogates:Clipped", doc="g'(x) = 1 where |x| <= t (vanilla STE)",
        params={"threshold": positive_float("clip threshold t of 'clipped'", 1.0)},
    ),
    surrogate("steep2", impl="gradsweep.problems.surrogates:Steep2", doc="g'(x) = 2 where |x| <= 0.5"),
    surrogate("polynomial", impl="gradsweep.problems.surrogates:Polynomial", doc="g'(x) = 2 - 2|x| where |x| <= 1 (ApproxSign)"),
    surrogate(
        "swish_sign", impl="gradsweep.problems.surrogates:SwishSign", doc="SignSwish derivative (BNN+)",
        params={"beta": positive_float("sharpness b of 'swish_sign'", 5.0)},
    ),
]


def build_problem(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    dtype: Any,
    device: Any,
    cache_dir: Path,
) -> Any:
    """The problem of a ``problem`` config (its ``kind`` picks the declaration).

    A loose config (a test, a notebook) is completed by the spec layer first, so every
    implementation reads the canonical config only.
    """
    from gradsweep import registry
    from gradsweep.spec.validate import validate_kind

    canonical = validate_kind("problem", cfg)
    build = registry.implementation("problem", canonical["kind"])
    return build(canonical, seed=seed, dtype=dtype, device=device, cache_dir=cache_dir)


def __getattr__(name: str) -> Any:
    # The interface imports torch: load it only when asked for.
    if name in ("Problem", "Surrogate", "Point", "Batch", "straight_through"):
        from gradsweep.problems import base

        return getattr(base, name)
    raise AttributeError(f"module 'gradsweep.problems' has no attribute {name!r}")
