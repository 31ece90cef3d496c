"""Which torch device a cell runs on, and how that device is named in the results.

A spec says ``device: auto | cpu | cuda``; a Ray worker may additionally be *assigned* a GPU
(``cuda:k``), which wins over the spec. ``auto`` takes CUDA when torch sees one; an explicit
``cuda`` on a machine without CUDA is an error rather than a silent CPU run, because the timings
of such a cell would not mean what the spec says.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "describe", "synchronize"]


def resolve_device(requested: str | torch.device | None = "auto", assigned: str | torch.device | None = None) -> torch.device:
    """The device for ``requested`` (``auto``, ``cpu``, ``cuda``, ``cuda:K``), or ``assigned``.

    Raises ``ValueError`` naming ``device`` for an unknown name, and ``RuntimeError`` for CUDA
    asked for where torch sees none.
    """
    choice = assigned if assigned is not None else (requested or "auto")
    if isinstance(choice, torch.device):
        choice = str(choice)
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected auto, cpu or cuda, got {choice!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {choice!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device: {choice!r} was asked for, but torch sees no CUDA device on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device: {choice!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def describe(device: torch.device | str) -> str:
    """A short name for the results' ``run_device``: ``"cpu"`` or ``"cuda:0 NVIDIA H100 ..."``."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels on ``device`` (a no-op on the CPU), so that timings are real."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
