"""The catalog gives loose configs their declared defaults, and refuses to invent a required one."""

import pytest

from gradsweep import catalog


def test_a_given_value_wins_over_the_default() -> None:
    assert catalog.TOY_MLP.value({"dim": 32}, "dim") == 32


def test_a_missing_value_takes_the_declared_default() -> None:
    assert catalog.TOY_MLP.value({}, "dim") == catalog.TOY_MLP.fields["dim"].default
    assert catalog.STEP.value({}, "momentum") == 0.9


def test_a_missing_required_value_is_an_error_naming_its_path() -> None:
    with pytest.raises(ValueError, match=r"problem\.pretrain\.steps: required"):
        catalog.TOY_PRETRAIN.value({}, "steps", where="problem.pretrain.")
