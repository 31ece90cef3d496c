"""Every parameter a spec may set, derived from the kinds' declarations.

This module is the contract between the spec layer (which validates YAML against it, fills
defaults and builds the canonical cell), the results store (which derives the Parquet columns
from it) and the implementations (which receive already-validated values). It lists no kind
itself: problems, estimators, experiments and the rest come from their declarations
(:mod:`gradsweep.declare`, collected by :mod:`gradsweep.registry` from gradsweep's own modules
and installed plugins). It imports neither torch nor Ray, so ``gradsweep plan`` and the analysis
stay light.

A *kind* is a :class:`Group` of named :class:`Param` and nested groups. A parameter may apply
only ``when`` a sibling has one of some values: for example ``threshold`` applies to ``ste``
only when ``variant`` is ``clipped``. A parameter that does not apply is absent from the
canonical cell (and null in the results), and setting it in a spec is an error.

The derived nodes (``TOP``, ``PROBLEMS``, ``ESTIMATORS``, ...) are module attributes built on
first access; :func:`reset` forgets them (after a plugin is installed, in tests).
"""

from __future__ import annotations

from typing import Any

from gradsweep.declare import LAYER_PATTERN, ORIGINAL, REQUIRED, TYPES, Group, Param, Union, without_introduced

__all__ = [
    "REQUIRED", "ORIGINAL", "TYPES", "LAYER_PATTERN", "Param", "Group", "Union", "NOT_IN_CELL",
    "without_introduced",
    "PROBLEMS", "ESTIMATORS", "EXPERIMENTS", "TOP", "derive", "reset", "problem_dtype",
]

# Keys of TOP that describe the sweep or its scheduling, not a cell's result: they are not part
# of a cell's identity (changing them reruns nothing).
NOT_IN_CELL = ("name", "description", "resources", "seeds")

_DERIVED = ("TOP", "PROBLEMS", "ESTIMATORS", "EXPERIMENTS")
_cache: dict[str, Any] = {}


def derive(reg: Any) -> dict[str, Any]:
    """``TOP``, ``PROBLEMS``, ``ESTIMATORS`` and ``EXPERIMENTS`` of a registry's kinds."""
    problems = reg.union("problem", doc="what L is")
    estimators = reg.union("estimator", doc="how the gradient is estimated", many=True)
    experiments = tuple(reg.by_role["experiment"])
    # The top-level sections (measure, step) come from the experiments that read them.
    sections: dict[str, tuple[Group, list[str]]] = {}
    for name in experiments:
        for key, group in reg.kind("experiment", name).options.get("sections", {}).items():
            if key in sections and sections[key][0] is not group:
                raise RuntimeError(f"experiments declare section {key!r} twice, differently")
            sections.setdefault(key, (group, []))[1].append(name)
    fields: dict[str, Any] = {
        "name": Param("str", REQUIRED, "sweep name; results go to <results>/<name>/", pattern=r"^[a-z0-9-]+$"),
        "description": Param("str", "", "free text"),
        "experiment": Param("str", "probe", "what one cell does", choices=experiments),
        "problem": problems,
        "estimator": estimators,
        "params": Param("layers", "all", "which parameters are estimated: all, or layer selectors"),
    }
    for key, (group, users) in sections.items():
        resolved = reg.resolve(group)
        fields[key] = Group(resolved.fields, doc=resolved.doc, nullable=resolved.nullable, default=resolved.default,
                            when={"experiment": tuple(users)}, checks=resolved.checks)
    fields.update({
        "seeds": Param("int_list", [0], "the num_init repeats, crossed with every other axis"),
        "resources": Group(
            {
                "cpu": Param("float", 1.0, "CPUs per cell", low=0.0, low_open=True),
                "gpu": Param("float", 0.0, "GPUs per cell (fractional); ignored without GPUs", low=0.0),
                "memory": Param("float", None, "GB of memory per cell: Ray schedules by it; null: not declared", low=0.0, low_open=True, nullable=True),
                "timeout": Param("float", None, "seconds a cell may run before it is stopped and recorded failed; null: no limit", low=0.0, low_open=True, nullable=True),
            }
        ),
        "dtype": Param("str", None, "float32 | float64; null: the problem's default (float64 for rosenbrock), "
                       "else float32", choices=("float32", "float64"), nullable=True),
        "device": Param("str", "auto", "auto (CUDA when present) | cpu | cuda", choices=("auto", "cpu", "cuda")),
    })
    return {
        "TOP": Group(fields),
        "PROBLEMS": dict(problems.kinds),
        "ESTIMATORS": dict(estimators.kinds),
        "EXPERIMENTS": experiments,
    }


def __getattr__(name: str) -> Any:
    if name in _DERIVED:
        from gradsweep.registry import registry

        reg = registry()
        if _cache.get("registry") is not reg:  # derived once per (complete) registry
            _cache.clear()
            _cache.update(derive(reg), registry=reg)
        return _cache[name]
    raise AttributeError(f"module 'gradsweep.catalog' has no attribute {name!r}")


def reset() -> None:
    """Forget the derived nodes; the next access derives them from the registry again."""
    _cache.clear()


def problem_dtype(kind: str) -> str:
    """The precision a problem kind runs in when the spec leaves ``dtype`` null."""
    from gradsweep.registry import registry

    table = registry().by_role["problem"]
    declared = table[kind].options.get("dtype") if kind in table else None
    return declared or "float32"
