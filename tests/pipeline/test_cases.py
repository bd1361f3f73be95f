"""A run's cases checked against their models: loading each (serial runs and workers) or, in a
pytest-xdist controller, reading the shape from the model's config without loading it."""

import pytest

from circuit.claims import ClaimFileError, parse_claim_text
from circuit.models import model_shape
from circuit.pipeline.cases import select_cases, validate_cases
from circuit.pipeline.options import ClaimOptions
from tests.support import claim_file

OUT_OF_RANGE = """
[[claims]]
id = "movers"
kind = "word-movers"
heads = ["L7H0"]
roles = { attends_to = "descriptor" }
thresholds = { share = 0.5 }
"""


class _NoLoads:
    """A model cache that fails the test if anything asks it for a model."""

    device = None
    dtype = "float32"

    def get(self, model, revision):
        raise AssertionError(f"{model}@{revision} was loaded")


@pytest.mark.parametrize(
    ("spec", "shape"),
    [("bundled", (4, 8)), ("random:bundled", (4, 8)), ("random:pythia-410m", (24, 16))],
)
def test_model_shape_reads_the_config(spec, shape):
    assert model_shape(spec) == shape


def test_the_controller_checks_heads_without_loading(tmp_path):
    good = parse_claim_text(claim_file("bundled"), tmp_path / "good.toml")
    cases = select_cases([good], ClaimOptions())
    validate_cases(cases, _NoLoads(), load=False)
    bad = parse_claim_text(claim_file("bundled", OUT_OF_RANGE), tmp_path / "bad.toml")
    with pytest.raises(ClaimFileError, match="L7H0"):
        validate_cases(select_cases([bad], ClaimOptions()), _NoLoads(), load=False)
    with pytest.raises(AssertionError, match="was loaded"):
        validate_cases(cases, _NoLoads())
