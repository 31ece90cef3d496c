"""docs/specs.md is generated from the catalog and must be regenerated when the catalog changes."""

from pathlib import Path

from gradsweep import catalog
from gradsweep.spec.reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "specs.md"


def test_docs_specs_md_is_what_the_catalog_renders() -> None:
    assert DOC.read_text() == render(), "regenerate: python -m gradsweep.spec.reference > docs/specs.md"


def test_every_problem_and_estimator_kind_has_a_section() -> None:
    text = render()
    for kind in [*catalog.PROBLEMS, *catalog.ESTIMATORS]:
        assert f"### `{kind}`" in text
