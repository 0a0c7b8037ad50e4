"""The image parameters shared by the bucket operators and the arrivals trigger."""

from __future__ import annotations

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators.bucket import GenerateBackgroundOperator, RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.operations import IMAGE_FIELDS, image_parameters


def test_the_defaults_are_the_operators_own() -> None:
    removal = RemoveBackgroundOperator(
        task_id="cut", conn_id="pixian_default", source_bucket="src", destination_bucket="dst"
    )
    generation = GenerateBackgroundOperator(task_id="gen", source_bucket="src", destination_bucket="dst")
    defaults = image_parameters({})
    assert list(defaults) == list(IMAGE_FIELDS)
    for name, value in defaults.items():
        operator = generation if hasattr(generation, name) and not hasattr(removal, name) else removal
        assert getattr(operator, name) == value, name
    assert defaults["output_format"] == "png" and defaults["jpeg_quality"] == 90


def test_given_parameters_win_and_others_are_refused() -> None:
    assert image_parameters({"crop": True, "scene": "marble"})["crop"] is True
    assert image_parameters({"crop": True, "scene": "marble"})["scene"] == "marble"
    with pytest.raises(InvalidOptionError, match="'max_sise'"):
        image_parameters({"max_sise": 512})
