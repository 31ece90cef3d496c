"""Estimators, registered by spec name (see :mod:`gradsweep.estimators.base`)."""

from __future__ import annotations

import importlib

from gradsweep.estimators.base import Estimator, get, register, registered

__all__ = ["Estimator", "get", "register", "registered"]

# Importing a module registers its estimators.
for _module in (
    "gradsweep.estimators.ste",
    "gradsweep.estimators.autograd",
    "gradsweep.estimators.cdg",
    "gradsweep.estimators.nes",
    "gradsweep.estimators.sr_ste",
    "gradsweep.estimators.followups",
):
    importlib.import_module(_module)
