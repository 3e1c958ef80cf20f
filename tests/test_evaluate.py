"""evaluate (top-1 / top-5 on a dataset): an empty loader is a one-line ValueError."""

import pytest
from helpers.models import tiny_vit

import dcvit


def test_evaluate_on_an_empty_loader_is_a_value_error():
    with pytest.raises(ValueError, match="no images.*accepted: a loader"):
        dcvit.evaluate(tiny_vit(1), [], progress=False)
