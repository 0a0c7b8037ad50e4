"""The built-in presets: data that matches the marketplace rules, each cited, each rendering compliant."""

from __future__ import annotations

import pytest

from airflow_provider_bgremoval.renditions.compliance import BorderColor, Fill, Formats, Limits, Opaque, Sides
from airflow_provider_bgremoval.renditions.presets import PRESETS
from airflow_provider_bgremoval.renditions.renderer import RenderedRendition, render
from airflow_provider_bgremoval.renditions.spec import RenditionSpec, parse_renditions
from tests.unit.renditions.synthetic import product_photo


def test_the_marketplaces_are_there() -> None:
    assert set(PRESETS) == {"amazon_main", "google_merchant", "shopify_square", "ebay"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_cited_spec(name: str) -> None:
    preset = PRESETS[name]
    spec = RenditionSpec(name="r", **preset.fields)
    assert spec.format in ("jpeg", "png", "webp")
    assert preset.rules, name
    assert "retrieved 2026-12" in preset.source or "(20" in preset.source
    for url in preset.urls:
        assert url.startswith("https://")


def test_amazon_main_encodes_the_published_rule() -> None:
    preset = PRESETS["amazon_main"]
    assert preset.fields["background"] == "#ffffff"
    assert preset.fields["fill"] == 0.85
    assert BorderColor(rgb=(255, 255, 255), tolerance=0) in preset.rules
    assert Fill(minimum=0.85) in preset.rules
    assert Opaque() in preset.rules
    assert Sides(min_long=1000) in preset.rules
    (formats,) = (rule for rule in preset.rules if isinstance(rule, Formats))
    assert "webp" not in formats.allowed
    assert "255,255,255" in preset.source and "85 %" in preset.source


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_renders_compliant_from_a_large_master(name: str) -> None:
    (outcome,) = render(product_photo((3000, 2400)), parse_renditions([{"name": "r", "preset": name}]))
    assert isinstance(outcome, RenderedRendition)
    assert outcome.compliant, outcome.verdict.as_dict()


def test_a_small_master_cannot_meet_amazons_minimum_without_upscaling() -> None:
    master = product_photo((800, 600))  # the subject is ~400 px: the canvas ~470 px
    refused, allowed = render(
        master,
        parse_renditions(
            [{"name": "a", "preset": "amazon_main"}, {"name": "b", "preset": "amazon_main", "upscale": True}]
        ),
    )
    assert isinstance(refused, RenderedRendition) and isinstance(allowed, RenderedRendition)
    assert not refused.compliant
    assert "min_size" in refused.verdict.failed and "long_side_min_1000" in refused.verdict.failed
    assert refused.layout.refused_upscale > 2
    assert allowed.compliant
    assert allowed.measured.width == allowed.measured.height == 1000


@pytest.mark.parametrize(("name", "megabytes"), [("amazon_main", 10), ("google_merchant", 16)])
def test_file_size_limits_take_the_stricter_decimal_megabyte(name: str, megabytes: int) -> None:
    # "10 MB" / "16 MB" without a unit definition: 10,000,000 bytes is under the limit either way,
    # while 10 MiB (10,485,760) is over it if the marketplace means decimal megabytes.
    (limits,) = (rule for rule in PRESETS[name].rules if isinstance(rule, Limits))
    assert limits.max_bytes == megabytes * 1_000_000
