"""Every parameter a spec may set, declared once.

This module is the contract between the spec layer (which validates YAML against it, fills
defaults and builds the canonical cell), the results store (which derives the Parquet columns
from it) and the implementations (which receive already-validated values). It imports neither
torch nor Ray, so ``gradsweep plan`` and the analysis stay light.

A *kind* (a problem, an estimator, an experiment) is a :class:`Group` of named :class:`Param`
and nested groups. A parameter may apply only ``when`` a sibling has one of some values: for
example ``threshold`` applies to ``ste`` only when ``variant`` is ``clipped``. A parameter that
does not apply is absent from the canonical cell (and null in the results), and setting it in a
spec is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = [
    "REQUIRED", "ORIGINAL", "Param", "without_introduced", "Group", "Union",
    "PROBLEMS", "ESTIMATORS", "EXPERIMENTS", "TOP", "STE_VARIANTS", "LAYER_PATTERN",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class _Original:
    def __repr__(self) -> str:
        return "ORIGINAL"


#: ``Param.introduced`` of a parameter that existed from the start
ORIGINAL: Any = _Original()

# Types a Param may have. "number_list": a list of numbers or a range mapping ({linspace: ...},
# {logspace: ...}, {arange: ...}); "layers": "all" or a list of layer selectors (module names,
# "linear:K", "conv:K"); "int_list": a list of integers (or a range); "x0": a list of numbers or
# {randint: [lo, hi]}; "str_list": a list of strings.
TYPES = ("int", "float", "bool", "str", "number_list", "int_list", "str_list", "layers", "x0")

LAYER_PATTERN = r"^(all|[A-Za-z_][A-Za-z0-9_.]*|(linear|conv):-?[1-9][0-9]*)$"


@dataclass(frozen=True)
class Param:
    """One leaf parameter.

    ``low``/``high`` bound numbers (``low_open`` makes the lower bound strict, e.g. epsilon > 0).
    ``when`` maps a sibling key to the values for which this parameter applies.
    ``nullable`` lets the spec write ``null`` (meaning "none").
    ``introduced``: for a parameter added after results existed, the value that reproduces the
    behaviour from before it existed. A cell whose value equals it hashes as if the key were
    absent, so cells computed before the parameter keep their ids (the canonical config and the
    result rows still carry the value; readers fill an old file's null column with it).
    ``inert``: why this parameter cannot change a cell's result (non-empty: ``plan`` warns when a
    sweep varies it, instead of silently computing identical cells).
    """

    type: str
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple | None = None
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    when: Mapping[str, tuple] | None = None
    nullable: bool = False
    even: bool = False
    pattern: str | None = None
    introduced: Any = ORIGINAL
    inert: str = ""

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown Param type {self.type!r}")


@dataclass(frozen=True)
class Group:
    """A mapping of named parameters and nested groups.

    ``nullable``: the whole group may be ``null`` (``default=None`` makes null the default, as for
    ``pretrain``). ``when`` as for :class:`Param`. ``checks``: rules across fields, each a
    function of the concrete group (a dict) returning an error message or None.
    """

    fields: Mapping[str, "Param | Group | Union"]
    doc: str = ""
    nullable: bool = False
    default: Any = REQUIRED  # REQUIRED: the group is filled from its fields' defaults; None: null
    when: Mapping[str, tuple] | None = None
    checks: tuple[Callable[[Mapping[str, Any]], "str | None"], ...] = ()

    def value(self, cfg: Mapping[str, Any], key: str, *, where: str = "") -> Any:
        """``cfg[key]``, else this group's declared default: code that takes a loose config (a
        test, a notebook) reads its options through here. ``where`` prefixes the error's key path."""
        if key in cfg:
            return cfg[key]
        default = self.fields[key].default
        if default is REQUIRED:
            raise ValueError(f"{where}{key}: required, and not given")
        return default


@dataclass(frozen=True)
class Union:
    """A mapping discriminated by its ``kind`` key: one of ``kinds`` (e.g. the estimator).

    ``many``: a list of such mappings is allowed, and each entry expands on its own (the spec's
    estimator union). ``nullable``/``default`` as for :class:`Group`.
    """

    kinds: Mapping[str, Group]
    doc: str = ""
    many: bool = False
    nullable: bool = False
    default: Any = REQUIRED
    when: Mapping[str, tuple] | None = None


def _same(a: Any, b: Any) -> bool:
    """Equal as canonical values: ``True`` is not ``1``, but ``1`` is ``1.0`` (a float parameter's
    canonical value is a float whatever the declaration wrote)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def without_introduced(node: "Param | Group | Union", value: Any) -> Any:
    """``value`` (a canonical config of ``node``) without the keys that sit at their
    ``introduced`` value: what a cell's id and a cache key hash, so that adding a parameter
    leaves the ids and keys of everything computed before it unchanged."""
    if isinstance(node, Union):
        if isinstance(value, Mapping) and value.get("kind") in node.kinds:
            return without_introduced(node.kinds[value["kind"]], value)
        return value
    if not isinstance(node, Group) or not isinstance(value, Mapping):
        return value
    out = {}
    for key, item in value.items():
        child = node.fields.get(key)
        if isinstance(child, Param) and child.introduced is not ORIGINAL and _same(item, child.introduced):
            continue
        out[key] = without_introduced(child, item) if child is not None else item
    return out


def _positive_int(doc: str, default: Any = REQUIRED, **kw: Any) -> Param:
    return Param("int", default, doc, low=1, **kw)


def _positive_float(doc: str, default: Any = REQUIRED, **kw: Any) -> Param:
    return Param("float", default, doc, low=0.0, low_open=True, **kw)


# ---------------------------------------------------------------------------------------------
# Problems

OPTIMIZERS = ("sgd", "momentum", "adam")
ACTIVATIONS = ("fp", "binary", "ternary", "2bit")
STE_VARIANTS = ("identity", "clipped", "steep2", "polynomial", "swish_sign")

_PLATEAU = {"until": ("plateau",)}
#: the stop rule of a pretraining, shared by every problem that pretrains ("until the loss stops
#: falling"); ``until: steps`` (fixed length) is how pretraining worked before the rule existed
_STOP_RULE: dict[str, Param] = {
    "until": Param(
        "str", "steps", "steps: train exactly `steps` steps; plateau: until the held-out loss stops falling",
        choices=("steps", "plateau"), introduced="steps",
    ),
    "patience": _positive_int("plateau: held-out evaluations without improvement before stopping", 5, when=_PLATEAU),
    "min_delta": Param(
        "float", 0.01, "plateau: an evaluation improves when its loss is below best * (1 - min_delta) "
        "(relative, so one value fits every loss scale)", low=0.0, when=_PLATEAU,
    ),
    "max_steps": _positive_int("plateau: stop here even if the loss still falls", 20000, when=_PLATEAU),
}

TOY_PRETRAIN = Group(
    {
        **_STOP_RULE,
        "steps": _positive_int("update steps of vanilla (clipped) STE training", when={"until": ("steps",)}),
        "eval_every": _positive_int("plateau: steps between evaluations on the held-out batch", 100, when=_PLATEAU),
        "batch_size": _positive_int("fresh N(0, 1) inputs per step", 16000),
        "lr": _positive_float("learning rate", 0.01),
        "optimizer": Param("str", "adam", "optimizer", choices=OPTIMIZERS),
    },
    doc="train the student with vanilla STE before measuring; null: the raw student",
    nullable=True,
    default=None,
)

TOY_MLP = Group(
    {
        "dim": _positive_int("width d of every hidden layer and of the input ('num_dim')", 8),
        "depth": Param("int", 3, "number of linear layers (d -> d -> ... -> 1)", low=2),
        "activation": Param("str", "binary", "activation of the student", choices=ACTIVATIONS),
        "teacher_activation": Param(
            "str", None, "activation of the teacher; null: the same as the student's",
            choices=ACTIVATIONS, nullable=True,
        ),
        "data": Group(
            {
                "batch_size": _positive_int("inputs per probe batch", 16000),
                "batches": _positive_int("probe batches, each drawn from the seed", 10),
            }
        ),
        "pretrain": TOY_PRETRAIN,
        "init": Param(
            "str", "normal", "weights of teacher and student: normal = N(0, 1/fan_in); torch_default = "
            "nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the notes' (sqrt(3) smaller)",
            choices=("normal", "torch_default"), introduced="normal",
        ),
    },
    doc="BinaryDuo teacher/student MLP on N(0, 1) inputs, MSE loss",
)


def _rosenbrock_n_even(cfg: Mapping[str, Any]) -> str | None:
    if cfg["variant"] == "pairs" and cfg["n"] % 2:
        return f"n must be even for variant pairs (x_(2i-1), x_(2i)), got n = {cfg['n']}"
    return None


def _rosenbrock_x0_length(cfg: Mapping[str, Any]) -> str | None:
    x0 = cfg["x0"]
    if isinstance(x0, list) and len(x0) != cfg["n"]:
        return f"x0 must have n = {cfg['n']} numbers, got {len(x0)}"
    return None


ROSENBROCK = Group(
    {
        "variant": Param("str", "pairs", "pairs: uncoupled pairs; chain: coupled", choices=("pairs", "chain")),
        "n": Param("int", 100, "dimension (even for pairs)", low=2),
        "x0": Param("x0", {"randint": [-10, 10]}, "start: a list of n numbers or {randint: [lo, hi]}"),
    },
    doc="Rosenbrock function, a full-precision sanity check",
    checks=(_rosenbrock_n_even, _rosenbrock_x0_length),
)

XNOR_PRETRAIN = Group(
    {
        **_STOP_RULE,
        "steps": _positive_int("optimizer steps", when={"until": ("steps",)}),
        "batch_size": _positive_int("images per step", 128),
        "lr": _positive_float("initial learning rate", 0.01),
        "optimizer": Param("str", "adam", "optimizer", choices=OPTIMIZERS),
        "weight_decay": Param("float", 0.0, "weight decay", low=0.0),
        "schedule": Param("str", "cosine", "lr schedule", choices=("constant", "cosine")),
        "checkpoint_every": _positive_int("steps between resumable checkpoints", 200),
        "augment": Param("bool", False, "random crop and flip while training"),
    },
    doc="STE pretraining of the network; null: the network as initialised",
    nullable=True,
    default=None,
)

XNOR_RESNET18 = Group(
    {
        "channels": _positive_int("initial channel count c (stage widths c, 2c, 4c, 8c)", 8),
        "weights": Param("str", "binary", "binary: sign(W) * mean|W| per output channel; fp", choices=("binary", "fp")),
        "ste": Param("str", "clipped", "surrogate of the binary activation", choices=STE_VARIANTS),
        "bn": Param("str", "running", "BN statistics during the probe: running (eval) or batch", choices=("running", "batch")),
        "data": Group(
            {
                "source": Param("str", "synthetic", "synthetic (offline) or cifar10 (a local copy)", choices=("synthetic", "cifar10")),
                "path": Param("str", None, "cifar-10-batches-py folder; null: $GRADSWEEP_CIFAR10", nullable=True),
                "batch_size": _positive_int("images per probe batch", 128),
                "batches": _positive_int("probe batches", 10),
                "image_size": _positive_int("side of the (synthetic) images", 32),
                "train_size": _positive_int("synthetic training images", 10000),
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
    doc="thin XNOR-ResNet-18 (basic blocks [2, 2, 2, 2]) on CIFAR-10 or synthetic images",
)

PROBLEMS: dict[str, Group] = {
    "toy_mlp": TOY_MLP,
    "rosenbrock": ROSENBROCK,
    "xnor_resnet18": XNOR_RESNET18,
}

# ---------------------------------------------------------------------------------------------
# Estimators

_STE_FIELDS: dict[str, Param] = {
    "variant": Param("str", "clipped", "surrogate derivative g'", choices=STE_VARIANTS),
    "threshold": _positive_float("clip threshold t of 'clipped'", 1.0, when={"variant": ("clipped",)}),
    "beta": _positive_float("sharpness b of 'swish_sign'", 5.0, when={"variant": ("swish_sign",)}),
}

_NES_FIELDS: dict[str, Param] = {
    "sigma": _positive_float("smoothing scale", 0.01),
    "samples": _positive_int("Gaussian directions n", 500),
    "antithetic": Param("bool", False, "use +-u pairs"),
    "shaping": Param("str", "none", "fitness shaping", choices=("none", "centered_rank")),
    "seed": Param("int", 0, "the estimator's own seed, combined with the cell seed and batch", low=0),
}

ESTIMATORS: dict[str, Group] = {
    "autograd": Group({}, doc="exact gradient (zero through step functions)"),
    "ste": Group(dict(_STE_FIELDS), doc="straight-through estimator family"),
    "cdg": Group(
        {
            "epsilon": _positive_float("finite-difference step", 0.1),
            "mode": Param("str", "central", "central or forward differences", choices=("central", "forward")),
        },
        doc="coordinate discrete gradient (finite differences per coordinate)",
    ),
    "nes": Group(dict(_NES_FIELDS), doc="natural evolution strategies / Gaussian smoothing"),
    "sr_ste": Group(
        {
            "tau": _positive_float(
                "RelaxedBernoulli temperature", 0.1,
                inert="sign(RelaxedBernoulli(p, tau) - 1/2) is Bernoulli(p) whatever tau is, and the backward "
                "is straight-through: cells that differ only in tau compute the same numbers",
            ),
            "samples": _positive_int("sampled STE gradients averaged (N)", 1),
            "seed": Param("int", 0, "the estimator's own seed", low=0),
        },
        doc="stochastic-rounding STE",
    ),
    "nes_max_point": Group(
        {k: v for k, v in _NES_FIELDS.items() if k != "shaping"},
        doc="step toward the sampled NES point whose loss decreased most",
    ),
    "perturbed_ste": Group(
        {
            **_STE_FIELDS,
            "noise": Param("float", 0.1, "scale of the noise added to the unit STE direction", low=0.0),
            "candidates": _positive_int("noisy candidates evaluated (K)", 8),
            "step": _positive_float("step length at which candidates are compared", 0.1),
            "seed": Param("int", 0, "the estimator's own seed", low=0),
        },
        doc="STE direction plus noise; the best of K candidates",
    ),
    "random_ste": Group(
        {
            "randomize": Param("str", "threshold", "what is random", choices=("threshold", "noise")),
            "low": _positive_float("smallest clip threshold", 0.1, when={"randomize": ("threshold",)}),
            "high": _positive_float("largest clip threshold", 1.0, when={"randomize": ("threshold",)}),
            "scale": Param("float", 0.5, "std of the multiplicative noise on g'", low=0.0, when={"randomize": ("noise",)}),
            "seed": Param("int", 0, "the estimator's own seed", low=0),
        },
        doc="a surrogate derivative drawn at random per backward pass",
    ),
}

# ---------------------------------------------------------------------------------------------
# Experiments and the top level

REFERENCE = Union(ESTIMATORS, doc="estimator whose gradient the cosine is taken against", nullable=True, default=None)

MEASURE = Group(
    {
        "lrs": Param("number_list", {"logspace": [-5, 0, 6]}, "learning rates of the probe"),
        "reference": REFERENCE,
        "evaluate": Param(
            "str", "plain",
            "forward that judges the loss before/after the update: plain sign (for sr_ste: 'fixed sr-STE', "
            "the notes' default), or the estimator's own (sr_ste's stochastic rounding; plain sign for ste, whose "
            "forward is sign; an error for the others)",
            choices=("plain", "estimator"),
        ),
    },
    when={"experiment": ("probe",)},
)

DECAY = Group(
    {
        "factor": _positive_float("multiply by this", 0.1),
        "every": _positive_int("steps between decays", 10000),
        "after": Param("int", 0, "first decay at this step", low=0),
        "applies_to": Param("str_list", ["lr"], "what decays: lr, epsilon, sigma", choices=("lr", "epsilon", "sigma")),
    },
    nullable=True,
    default=None,
)

STEP = Group(
    {
        "lr": _positive_float("learning rate", 0.1),
        "normalize": Param("bool", True, "step along the unit-norm estimate"),
        "steps": _positive_int("updates", 1000),
        "log_every": _positive_int("steps between logged rows", 100),
        "optimizer": Param("str", "sgd", "update rule", choices=OPTIMIZERS),
        "momentum": Param("float", 0.9, "momentum of 'momentum'", low=0.0, high=1.0, when={"optimizer": ("momentum",)}),
        "batches": Param("str", "fresh", "train: a fresh batch per step, or the probe batches in turn", choices=("fresh", "fixed")),
        "decay": DECAY,
        "switch": Union(
            ESTIMATORS, doc="train: change to this estimator when the loss stops falling", nullable=True, default=None,
        ),
        "patience": _positive_int("train: logged rows without improvement before switching", 5),
    },
    when={"experiment": ("descent", "train")},
)

EXPERIMENTS = ("probe", "descent", "train")

TOP = Group(
    {
        "name": Param("str", REQUIRED, "sweep name; results go to <results>/<name>/", pattern=r"^[a-z0-9-]+$"),
        "description": Param("str", "", "free text"),
        "experiment": Param("str", "probe", "what one cell does", choices=EXPERIMENTS),
        "problem": Union(PROBLEMS, doc="what L is"),
        "estimator": Union(ESTIMATORS, doc="how the gradient is estimated", many=True),
        "params": Param("layers", "all", "which parameters are estimated: all, or layer selectors"),
        "measure": MEASURE,
        "step": STEP,
        "seeds": Param("int_list", [0], "the num_init repeats, crossed with every other axis"),
        "resources": Group(
            {
                "cpu": Param("float", 1.0, "CPUs per cell", low=0.0, low_open=True),
                "gpu": Param("float", 0.0, "GPUs per cell (fractional); ignored without GPUs", low=0.0),
            }
        ),
        "dtype": Param("str", None, "float32 | float64; null: float64 for rosenbrock, else float32", choices=("float32", "float64"), nullable=True),
        "device": Param("str", "auto", "auto (CUDA when present) | cpu | cuda", choices=("auto", "cpu", "cuda")),
    }
)

# Keys of TOP that describe the sweep or its scheduling, not a cell's result: they are not part
# of a cell's identity (changing them reruns nothing).
NOT_IN_CELL = ("name", "description", "resources", "seeds")
