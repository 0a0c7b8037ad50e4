"""The rendition spec: normalisation, validation errors naming the field, presets by name."""

from __future__ import annotations

import dataclasses

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.renditions.compliance import Fill
from airflow_provider_bgremoval.renditions.presets import PRESETS
from airflow_provider_bgremoval.renditions.spec import (
    Preset,
    Rendition,
    RenditionSpec,
    parse_renditions,
    preset_registry,
    resolve_rendition,
)


def _error(call: object, *args: object, **kwargs: object) -> InvalidOptionError:
    with pytest.raises(InvalidOptionError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


class TestFields:
    def test_defaults(self) -> None:
        spec = RenditionSpec(name="design")
        assert (spec.format, spec.quality, spec.fit, spec.metadata) == ("png", 90, "contain", "strip")
        assert spec.resolved_background == "transparent" and spec.background_rgb is None
        assert spec.embed_srgb and not spec.upscale and not spec.crops

    def test_jpeg_defaults_to_white(self) -> None:
        spec = RenditionSpec(name="j", format="JPG")
        assert spec.format == "jpeg"
        assert spec.background_rgb == (255, 255, 255)
        assert (spec.content_type, spec.extension) == ("image/jpeg", ".jpg")

    def test_values_are_normalised(self) -> None:
        spec = RenditionSpec(
            name=" Thumb-1 ",
            background="White",
            aspect="4:3",
            fill="85%",
            max_size="2048",
            quality="80",
            upscale="yes",
            dpi="300",
            subsampling=" 4:2:0 ",
        )
        assert spec.name == "thumb-1"
        assert spec.background == "#ffffff"
        assert spec.aspect == pytest.approx(4 / 3)
        assert spec.fill == pytest.approx(0.85)
        assert (spec.max_size, spec.quality, spec.upscale, spec.dpi) == (2048, 80, True, 300)
        assert spec.crops  # fill implies the crop
        assert RenditionSpec(name="s", size=2048).size == (2048, 2048)
        assert RenditionSpec(name="s", size="800x600").size == (800, 600)
        assert RenditionSpec(name="s", background="transparent").resolved_background == "transparent"
        assert RenditionSpec(name="s", aspect=1.5, fill="").fill is None
        assert RenditionSpec(name="s", aspect="1.5").aspect == 1.5  # as a form or a template gives it

    def test_frozen(self) -> None:
        spec = RenditionSpec(name="a")
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.quality = 50  # type: ignore[misc]

    @pytest.mark.parametrize(
        ("fields", "parameter", "fragment"),
        [
            ({"format": "jpeg", "background": "transparent"}, "background", "JPEG has no transparency"),
            ({"format": "jpeg", "lossless": True}, "lossless", "always lossy"),
            ({"size": 100, "aspect": "1:1"}, "aspect", "not both"),
            ({"size": 100, "max_size": 50}, "max_size", "exact size"),
            ({"min_size": 900, "max_size": 800}, "min_size", "over max_size"),
            ({"fill": 0.8, "margin": "5%"}, "margin", "not both"),
            ({"fill": 0.8, "size": 100, "fit": "cover"}, "fit", "contain"),
            ({"fit": "cover"}, "fit", "needs a canvas"),
            ({"margin": "50% 10px"}, "margin", "less than 100%"),
            ({"format": "webp", "dpi": 72}, "dpi", "WebP"),
            ({"format": "webp", "size": [16_384, 100]}, "size", "at most 16,383 px a side"),
            ({"format": "webp", "min_size": 16_384}, "min_size", "at most 16,383 px a side"),
            ({"quality": 0}, "quality", "greater than or equal to 1"),
            ({"fill": 2}, "fill", "between 0.05 and 1"),
            ({"fill": "lots"}, "fill", "not a fill ratio"),
            ({"aspect": "wide"}, "aspect", "aspect ratio"),
            ({"background": "#12345"}, "background", "not a colour"),
            ({"background": "#00000080"}, "background", "opaque"),
            ({"format": "gif"}, "format", "png, jpeg, webp"),
            ({"fit": "stretch"}, "fit", "contain"),
            ({"margin": "5 px"}, "margin", "length"),
            ({"size": "0x10"}, "size", "below 1"),
            ({"size": [12_000, 12_000]}, "size", "over 100,000,000 pixels"),
            ({"max_size": 30_000}, "max_size", "between 1 and 20,000"),
            ({"min_size": "800x600"}, "min_size", "not a whole number"),
            ({"max_size": True}, "max_size", "not a whole number"),
            ({"metadata": "some"}, "metadata", "strip"),
            ({"colour": "srgb"}, "colour", "unknown option"),
        ],
    )
    def test_errors_name_the_field(self, fields: dict[str, object], parameter: str, fragment: str) -> None:
        error = _error(RenditionSpec, name="r", **fields)
        assert error.parameter == f"rendition.{parameter}"
        assert fragment in str(error)

    def test_webp_s_side_limit_binds_webp_only(self) -> None:
        assert RenditionSpec(name="w", format="webp", size=[16_383, 100]).max_side == 16_383
        assert RenditionSpec(name="w", format="webp", max_size=20_000).max_size == 20_000  # a bound
        assert RenditionSpec(name="p", format="png", size=[20_000, 100], min_size=None).max_side == 20_000

    @pytest.mark.parametrize("name", ["", "Bad Name", "-x", "a" * 65, "a/b"])
    def test_names_are_path_safe(self, name: str) -> None:
        assert _error(RenditionSpec, name=name).parameter == "rendition.name"

    def test_json_schema(self) -> None:
        schema = RenditionSpec.model_json_schema()
        assert schema["required"] == ["name"]
        assert schema["additionalProperties"] is False
        properties = schema["properties"]
        assert "fill" in properties and "subject fill ratio" in properties["fill"]["description"]
        assert properties["format"]["enum"] == ["png", "jpeg", "webp"]

    def test_fingerprint_follows_the_spec(self) -> None:
        first = Rendition(RenditionSpec(name="a", quality=80)).fingerprint
        assert first == Rendition(RenditionSpec(name="a", quality="80")).fingerprint
        assert first != Rendition(RenditionSpec(name="a", quality=81)).fingerprint
        assert first != Rendition(RenditionSpec(name="a", quality=80), rules=(Fill(minimum=0.5),)).fingerprint


class TestPresetsByName:
    def test_a_preset_with_overrides(self) -> None:
        rendition = resolve_rendition({"name": "amazon", "preset": "amazon_main", "quality": 92})
        spec = rendition.spec
        assert spec.preset == "amazon_main"
        assert (spec.format, spec.quality, spec.fill, spec.background) == ("jpeg", 92, 0.85, "#ffffff")
        assert rendition.rules == PRESETS["amazon_main"].rules
        assert rendition.source is not None and "255,255,255" in rendition.source

    def test_user_presets_extend_and_define(self) -> None:
        registry = preset_registry(
            {
                "site_thumb": {"format": "webp", "size": 256, "background": "#f4f4f4"},
                "amazon_small": {"preset": "amazon_main", "min_size": 500},
                "mine": Preset(name="mine", fields={"format": "png"}, rules=(Fill(minimum=0.5),)),
            }
        )
        thumb = resolve_rendition({"name": "t", "preset": "Site_Thumb"}, registry)
        assert (thumb.spec.format, thumb.spec.size, thumb.spec.preset) == ("webp", (256, 256), "site_thumb")
        small = resolve_rendition({"name": "s", "preset": "amazon_small"}, registry)
        assert (small.spec.format, small.spec.min_size, small.spec.preset) == ("jpeg", 500, "amazon_small")
        assert small.rules == PRESETS["amazon_main"].rules  # the rules it extends come along
        assert resolve_rendition({"name": "m", "preset": "mine"}, registry).rules == (Fill(minimum=0.5),)

    def test_preset_errors(self) -> None:
        error = _error(resolve_rendition, {"name": "x", "preset": "amazn"})
        assert error.parameter == "rendition.preset"
        assert "amazon_main" in str(error)
        error = _error(preset_registry, {"amazon_main": {"format": "png"}})
        assert error.parameter == "presets.amazon_main"
        looped = preset_registry({"a": {"preset": "b"}, "b": {"preset": "a"}})
        assert "extends itself" in str(_error(resolve_rendition, {"name": "x", "preset": "a"}, looped))
        assert _error(preset_registry, {"p": 3}).parameter == "presets.p"

    def test_a_rendition_without_a_name_says_it_needs_one(self) -> None:
        # a rendition of a preset with no name of its own: the message read "field required (got
        # ArgsKwargs((), {'format': 'jpeg', 'quality': 95, ...)", the merged fields pydantic received
        error = _error(parse_renditions, [{"preset": "amazon_main"}])
        assert error.parameter == "renditions[0].name"
        assert "ArgsKwargs" not in str(error) and "needs a name" in str(error)
        assert "{'name': 'amazon_main', 'preset': 'amazon_main'}" in str(error)
        error = _error(parse_renditions, [{"format": "webp"}])
        assert error.parameter == "renditions[0].name" and "ArgsKwargs" not in str(error)
        # a null name (a template's JSON) made a rendition called 'none'
        error = _error(parse_renditions, [{"name": None, "format": "png"}])
        assert error.parameter == "renditions[0].name" and "needs a name" in str(error)
        assert _error(RenditionSpec, name=None).parameter == "rendition.name"

    def test_a_rendition_given_as_a_name_says_how_to_give_it(self) -> None:
        error = _error(parse_renditions, ["Amazon_Main"])
        assert error.parameter == "renditions[0]"
        assert "{'name': 'amazon_main', 'preset': 'amazon_main'}" in str(error)
        error = _error(parse_renditions, ["amazon"], {"site": {"format": "webp"}})
        assert error.parameter == "renditions[0]"
        assert "known: amazon_main, ebay, google_merchant, shopify_square, site" in str(error)

    def test_an_override_error_names_the_rendition(self) -> None:
        error = _error(parse_renditions, [{"name": "a"}, {"name": "b", "preset": "amazon_main", "fill": 3}])
        assert error.parameter == "renditions[1].fill"

    def test_a_user_preset_s_bad_field_names_the_preset_that_set_it(self) -> None:
        # the rendition holds no fill: the message said 'renditions[0].fill' and nothing more
        presets = {"base": {"fill": 7}, "site": {"preset": "base", "format": "webp"}}
        error = _error(parse_renditions, [{"name": "a", "preset": "site"}], presets)
        assert error.parameter == "renditions[0].fill"
        assert "not a fill ratio" in str(error) and "(set by preset 'base')" in str(error)
        # a field the rendition gives itself is the rendition's
        error = _error(parse_renditions, [{"name": "a", "preset": "site", "fill": 3}], presets)
        assert "set by preset" not in str(error)

    def test_preset_fields_break_like_the_users(self) -> None:
        # a transparent background on a JPEG preset is refused, naming the field
        error = _error(
            parse_renditions, [{"name": "a", "preset": "amazon_main", "background": "transparent"}]
        )
        assert error.parameter == "renditions[0].background"


class TestParseRenditions:
    def test_none_and_a_list(self) -> None:
        assert parse_renditions(None) == ()
        renditions = parse_renditions([RenditionSpec(name="a"), {"name": "b", "format": "webp"}])
        assert [rendition.name for rendition in renditions] == ["a", "b"]

    def test_names_are_unique(self) -> None:
        error = _error(parse_renditions, [{"name": "a"}, {"name": "A"}])
        assert error.parameter == "renditions[1].name"
        assert "twice" in str(error)

    @pytest.mark.parametrize("value", [{"name": "a"}, "amazon", 3])
    def test_not_a_list(self, value: object) -> None:
        assert _error(parse_renditions, value).parameter == "renditions"

    def test_not_a_mapping(self) -> None:
        assert _error(parse_renditions, ["amazon"]).parameter == "renditions[0]"


class TestRoundTrip:
    def test_a_spec_gets_the_rules_of_the_preset_it_names(self) -> None:
        resolved = resolve_rendition({"name": "amazon", "preset": "amazon_main", "quality": 92})
        again = resolve_rendition(resolved.spec)
        assert again == resolved
        assert again.fingerprint == resolved.fingerprint

    def test_as_dict_round_trips(self) -> None:
        resolved = resolve_rendition({"name": "t", "size": 256, "margin": "6%", "background": "#f4f4f4"})
        assert resolve_rendition(resolved.spec.as_dict()) == resolved
