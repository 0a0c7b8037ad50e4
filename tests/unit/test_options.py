"""The unified option set (DESIGN.md decision 7): validation, normalisation and the native/local split."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.options import (
    Length,
    LocalSteps,
    Margin,
    RemovalOptions,
    VendorCapabilities,
    load_list,
    options_fingerprint,
    parse_flag,
    parse_size,
    split_options,
)
from airflow_provider_bgremoval.renditions.spec import RenditionSpec
from tests.support.connections import set_connection

# -- output format ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("png", "png"), ("PNG", "png"), ("jpg", "jpeg"), (" JPEG ", "jpeg"), ("webp", "webp"), ("WebP", "webp")],
)
def test_format_aliases_are_normalised(given: str, expected: str) -> None:
    assert RemovalOptions.create(output_format=given).output_format == expected


@pytest.mark.parametrize("given", ["gif", "tiff", "", "png8", "delta_png"])
def test_unknown_format_names_the_parameter(given: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        RemovalOptions.create(output_format=given)
    assert info.value.parameter == "output_format"
    assert "png, jpeg, webp" in str(info.value)


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [("png", "image/png", ".png"), ("jpeg", "image/jpeg", ".jpg"), ("webp", "image/webp", ".webp")],
)
def test_content_type_and_extension(fmt: str, content_type: str, extension: str) -> None:
    options = RemovalOptions.create(output_format=fmt)
    assert options.content_type == content_type
    assert options.extension == extension
    # a rendition's file follows its own format field the same way (one EncodedOptionSet)
    spec = RenditionSpec(name="r", format=fmt)
    assert (spec.content_type, spec.extension) == (content_type, extension)


# -- background colour -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("#fff", "#ffffff"),
        ("#FFF", "#ffffff"),
        ("#00ff7F", "#00ff7f"),
        ("#ff0000ff", "#ff0000"),  # opaque #rrggbbaa is accepted
        ("rgb(0, 128, 255)", "#0080ff"),
        ("rgb(0,128,255)", "#0080ff"),
        ("white", "#ffffff"),
        ("RebeccaPurple", "#663399"),
        ("  black  ", "#000000"),
    ],
)
def test_colour_forms(given: str, expected: str) -> None:
    assert RemovalOptions.create(background_color=given).background_color == expected


@pytest.mark.parametrize("given", ["not-a-colour", "#12345", "#gggggg", "rgb(1,2)", "0xffffff"])
def test_bad_colour_names_the_parameter(given: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        RemovalOptions.create(background_color=given)
    assert info.value.parameter == "background_color"
    assert "#rrggbb" in info.value.message


def test_translucent_colour_is_refused() -> None:
    with pytest.raises(InvalidOptionError, match="opaque") as info:
        RemovalOptions.create(background_color="#ff000080")
    assert info.value.parameter == "background_color"


@pytest.mark.parametrize("given", [None, ""])
def test_no_colour_keeps_transparency(given: str | None) -> None:
    assert RemovalOptions.create(background_color=given).background_color is None


def test_jpeg_without_colour_is_flattened_on_white() -> None:
    assert RemovalOptions.create(output_format="jpeg").effective_background == "#ffffff"
    assert RemovalOptions.create(output_format="png").effective_background is None
    assert RemovalOptions.create(output_format="webp").effective_background is None
    assert (
        RemovalOptions.create(output_format="jpeg", background_color="red").effective_background == "#ff0000"
    )


# -- crop and margin -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("True", True),
        ("yes", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("no", False),
        ("0", False),
        ("off", False),
        ("", False),
    ],
)
def test_crop_accepts_template_strings(given: bool | str, expected: bool) -> None:
    assert RemovalOptions.create(crop=given).crop is expected


def test_crop_rejects_non_booleans() -> None:
    with pytest.raises(InvalidOptionError) as info:
        RemovalOptions.create(crop="maybe")
    assert info.value.parameter == "crop"


def _px(value: float) -> Length:
    return Length(value, "px")


def _pct(value: float) -> Length:
    return Length(value, "%")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5%", (_pct(5), _pct(5), _pct(5), _pct(5))),
        ("10px", (_px(10), _px(10), _px(10), _px(10))),
        ("10px 5%", (_px(10), _pct(5), _px(10), _pct(5))),
        ("1px 2px 3px", (_px(1), _px(2), _px(3), _px(2))),
        ("1px 2px 3px 4px", (_px(1), _px(2), _px(3), _px(4))),
        ("2.5%  0px", (_pct(2.5), _px(0), _pct(2.5), _px(0))),
        ("100%", (_pct(100),) * 4),
        ("10000px", (_px(10000),) * 4),
    ],
)
def test_margin_one_to_four_values(text: str, expected: tuple[Length, ...]) -> None:
    margin = Margin.parse(text)
    assert (margin.top, margin.right, margin.bottom, margin.left) == expected
    assert RemovalOptions.create(crop=True, margin=text).margin == margin


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "1 to 4"),
        ("1px 2px 3px 4px 5px", "1 to 4"),
        ("5", "not a length"),
        ("5pt", "not a length"),
        ("-5px", "not a length"),
        ("px", "not a length"),
        ("101%", "over 100%"),
        ("10001px", "over 10000px"),
    ],
)
def test_bad_margins(text: str, fragment: str) -> None:
    with pytest.raises(InvalidOptionError, match=fragment) as info:
        Margin.parse(text)
    assert info.value.parameter == "margin"


def test_margin_str_round_trips() -> None:
    margin = Margin.parse("10px 2.5%")
    assert str(margin) == "10px 2.5% 10px 2.5%"
    assert Margin.parse(str(margin)) == margin


def test_margin_requires_crop() -> None:
    with pytest.raises(InvalidOptionError, match="crop=True") as info:
        RemovalOptions.create(margin="5%")
    assert info.value.parameter == "margin"
    assert RemovalOptions.create(margin="").margin is None


def test_margin_object_is_taken_as_is() -> None:
    margin = Margin.parse("3px")
    assert RemovalOptions.create(crop=True, margin=margin).margin is margin


def test_length_resolution() -> None:
    assert _px(12.4).resolve(1000) == 12
    assert _pct(10).resolve(250) == 25
    assert _pct(0).resolve(250) == 0
    assert str(_pct(2.5)) == "2.5%"
    assert str(_px(7)) == "7px"


# -- max size and quality --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        (512, (512, 512)),
        ("800x600", (800, 600)),
        ("800X600", (800, 600)),
        ("800\u00d7600", (800, 600)),  # multiplication sign
        ("800, 600", (800, 600)),
        ("640", (640, 640)),
        ((100, 200), (100, 200)),
        ([100, 200], (100, 200)),
        (("1", "20000"), (1, 20000)),
    ],
)
def test_max_size_forms(given: object, expected: tuple[int, int] | None) -> None:
    assert RemovalOptions.create(max_size=given).max_size == expected


@pytest.mark.parametrize("given", ["axb", "1x2x3", 0, "0x10", 20001, (10,), object(), "10x-1"])
def test_bad_max_size(given: object) -> None:
    with pytest.raises(InvalidOptionError) as info:
        RemovalOptions.create(max_size=given)
    assert info.value.parameter == "max_size"


@pytest.mark.parametrize(("given", "expected"), [(90, 90), ("85", 85), (1, 1), (100, 100)])
def test_quality(given: int | str, expected: int) -> None:
    assert RemovalOptions.create(jpeg_quality=given).jpeg_quality == expected


@pytest.mark.parametrize("given", [0, 101, "high", None])
def test_bad_quality(given: object) -> None:
    with pytest.raises(InvalidOptionError) as info:
        RemovalOptions.create(jpeg_quality=given)  # type: ignore[arg-type]
    assert info.value.parameter == "jpeg_quality"


def test_defaults_and_as_dict() -> None:
    assert RemovalOptions.create() == RemovalOptions()
    options = RemovalOptions.create(
        output_format="jpg", background_color="#FFF", crop="true", margin="5%", max_size="800x600"
    )
    assert options.as_dict() == {
        "output_format": "jpeg",
        "background_color": "#ffffff",
        "crop": True,
        "margin": "5% 5% 5% 5%",
        "max_size": [800, 600],
        "jpeg_quality": 90,
    }
    assert RemovalOptions().as_dict()["margin"] is None
    assert RenditionSpec(name="r", margin="6%").as_dict()["margin"] == "6% 6% 6% 6%"  # any Margin field


def test_options_are_frozen() -> None:
    options = RemovalOptions()
    with pytest.raises(AttributeError):
        options.crop = True  # type: ignore[misc]


# -- options_fingerprint ---------------------------------------------------------------------------


def test_fingerprint_is_stable_and_order_independent() -> None:
    a = options_fingerprint({"output_format": "png", "crop": True}, {"shadow": None})
    b = options_fingerprint({"crop": True, "output_format": "png"}, {"shadow": None})
    assert a == b
    assert len(a) == 16
    assert int(a, 16) >= 0


def test_fingerprint_golden_value() -> None:
    # Finished outputs carry this hash as object metadata (DESIGN.md decision 5): changing how it is
    # computed makes every rerun pay again. Update this value only on purpose.
    assert options_fingerprint(RemovalOptions().as_dict()) == "fe335046b2f9e543"
    assert options_fingerprint(None) == options_fingerprint({})


def test_fingerprint_changes_with_any_option() -> None:
    base = RemovalOptions().as_dict()
    seen = {options_fingerprint(base)}
    for change in (
        {"output_format": "webp"},
        {"background_color": "#ffffff"},
        {"crop": True},
        {"max_size": [10, 10]},
        {"jpeg_quality": 80},
    ):
        seen.add(options_fingerprint({**base, **change}))
    seen.add(options_fingerprint(base, {"vendor_option": 1}))
    assert len(seen) == 7


# -- split_options -------------------------------------------------------------------------------

PNG_ONLY = VendorCapabilities(output_formats=frozenset({"png"}), background_color=False, crop=False)
NATIVE_BG_JPEG = VendorCapabilities(
    output_formats=frozenset({"png", "jpeg"}), background_color=True, crop=True
)
EVERYTHING = VendorCapabilities(
    output_formats=frozenset({"png", "jpeg", "webp"}), background_color=True, crop=True
)
BG_PNG_ONLY = VendorCapabilities(output_formats=frozenset({"png"}), background_color=True, crop=False)


def _opts(**kwargs: object) -> RemovalOptions:
    return RemovalOptions.create(**kwargs)  # type: ignore[arg-type]


def test_png_only_vendor_asked_for_webp_white_crop_margin() -> None:
    options = _opts(output_format="webp", background_color="white", crop=True, margin="5%")
    plan = split_options(options, PNG_ONLY)
    assert plan.native == RemovalOptions(output_format="png", jpeg_quality=90)
    assert plan.local == LocalSteps(
        crop=True, margin=Margin.parse("5%"), background_color="#ffffff", output_format="webp", quality=90
    )
    assert plan.local.needed


def test_native_background_and_jpeg_vendor_asked_for_jpeg() -> None:
    plan = split_options(_opts(output_format="jpeg"), NATIVE_BG_JPEG)
    # JPEG has no alpha: the vendor flattens on white itself and its bytes are kept as they are.
    assert plan.native.output_format == "jpeg"
    assert plan.native.background_color == "#ffffff"
    assert plan.local == LocalSteps()
    assert not plan.local.needed


def test_png_only_vendor_asked_for_jpeg_flattens_locally() -> None:
    plan = split_options(_opts(output_format="jpeg", jpeg_quality=70), PNG_ONLY)
    assert plan.native.output_format == "png"
    assert plan.native.background_color is None
    assert plan.local == LocalSteps(background_color="#ffffff", output_format="jpeg", quality=70)


def test_crop_without_margin_is_native_where_supported() -> None:
    plan = split_options(_opts(crop=True), NATIVE_BG_JPEG)
    assert plan.native.crop is True
    assert plan.local == LocalSteps()


def test_crop_without_margin_is_local_where_not_supported() -> None:
    plan = split_options(_opts(crop=True), PNG_ONLY)
    assert plan.native.crop is False
    assert plan.local.crop is True
    assert plan.local.margin is None
    assert plan.local.output_format == "png"


def test_margin_always_crops_locally_and_pulls_the_background_with_it() -> None:
    plan = split_options(_opts(crop=True, margin="10px", background_color="red"), EVERYTHING)
    # The local crop needs the alpha channel, so the vendor must not flatten first.
    assert plan.native.crop is False
    assert plan.native.margin is None
    assert plan.native.background_color is None
    assert plan.local.crop is True
    assert plan.local.margin == Margin.parse("10px")
    assert plan.local.background_color == "#ff0000"


@pytest.mark.parametrize("caps", [PNG_ONLY, NATIVE_BG_JPEG, EVERYTHING, BG_PNG_ONLY])
def test_max_size_is_always_local(caps: VendorCapabilities) -> None:
    plan = split_options(_opts(max_size=256), caps)
    assert plan.native.max_size is None
    assert plan.local.max_size == (256, 256)
    assert plan.local.output_format == "png"  # pixels change locally, so the result is re-encoded
    assert plan.local.needed


def test_max_size_with_native_background_keeps_the_background_native() -> None:
    plan = split_options(_opts(output_format="jpeg", max_size="100x100"), NATIVE_BG_JPEG)
    assert plan.native.background_color == "#ffffff"
    assert plan.native.output_format == "png"  # re-encoded locally after the resize anyway
    assert plan.local.background_color is None
    assert plan.local.output_format == "jpeg"


def test_background_native_but_format_local() -> None:
    plan = split_options(_opts(output_format="webp", background_color="#123456"), BG_PNG_ONLY)
    assert plan.native.background_color == "#123456"
    assert plan.native.output_format == "png"
    assert plan.local == LocalSteps(output_format="webp")
    assert plan.local.needed


def test_everything_native() -> None:
    options = _opts(output_format="webp", background_color="#123456", crop=True)
    plan = split_options(options, EVERYTHING)
    assert plan.native == options
    assert not plan.local.needed


def test_default_options_need_nothing_local_anywhere() -> None:
    for caps in (PNG_ONLY, NATIVE_BG_JPEG, EVERYTHING, BG_PNG_ONLY):
        plan = split_options(RemovalOptions(), caps)
        assert plan.native == RemovalOptions()
        assert not plan.local.needed


@pytest.mark.parametrize("caps", [PNG_ONLY, NATIVE_BG_JPEG, EVERYTHING, BG_PNG_ONLY])
@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("color", [None, "#00ff00"])
@pytest.mark.parametrize("crop", [False, True])
def test_plan_invariants(caps: VendorCapabilities, fmt: str, color: str | None, crop: bool) -> None:
    """Whatever the split, the vendor is only asked what it can do and the result ends as asked."""
    options = _opts(output_format=fmt, background_color=color, crop=crop)
    plan = split_options(options, caps)
    native, local = plan.native, plan.local
    assert native.output_format in caps.output_formats
    assert native.margin is None
    assert native.max_size is None
    if native.background_color is not None:
        assert caps.background_color
    if native.crop:
        assert caps.crop
    # the final format is the one asked for
    assert (local.output_format or native.output_format) == options.output_format
    # the background is applied exactly once
    assert (native.background_color is not None) + (local.background_color is not None) == (
        options.effective_background is not None
    )
    # the crop is done exactly once
    assert native.crop + local.crop == options.crop


# -- fingerprints recorded on outputs (pinned) -----------------------------------------------------
#
# A finished output carries the fingerprint of the options that made it; a rerun skips an output whose
# fingerprint matches (DESIGN.md decision 5). These hex strings were computed with the option code as
# it was before the options moved to pydantic: a change to any of them makes every user pay again for
# their whole catalogue. They are computed exactly as the batch computes them (the processors, with
# real hooks), so option normalisation, ``as_dict()``, the hooks' ``output_settings`` and the hash
# itself are all pinned. Update a value only on purpose, with a migration note.


def _pixelcut_shadow(**kwargs: Any) -> Any:
    from airflow_provider_bgremoval.vendors.pixelcut import PixelcutOptions, PixelcutShadow

    return PixelcutOptions(shadow=PixelcutShadow(**kwargs))


def _pixelcut(**kwargs: Any) -> Any:
    from airflow_provider_bgremoval.vendors.pixelcut import PixelcutOptions

    return PixelcutOptions(**kwargs)


def _pixian(**kwargs: Any) -> Any:
    from airflow_provider_bgremoval.vendors.pixian import PixianOptions

    return PixianOptions(**kwargs)


def _poof(**kwargs: Any) -> Any:
    from airflow_provider_bgremoval.vendors.poof import PoofOptions

    return PoofOptions(**kwargs)


def _generate(**kwargs: Any) -> Any:
    from airflow_provider_bgremoval.vendors.pixelcut import PixelcutGenerateOptions

    return PixelcutGenerateOptions(**kwargs)


def _nested_shadow_mapping() -> dict[str, Any]:
    from airflow_provider_bgremoval.vendors.pixelcut import PixelcutShadow

    return {"shadow": PixelcutShadow(opacity=0.3)}


@dataclass(frozen=True)
class RemovalCase:
    """
    One remove-background batch configuration and the fingerprint its outputs carry.

    :param vendor: the hook's vendor.
    :param options: ``RemovalOptions.create`` arguments.
    :param vendor_options: builds the vendor options exactly as a user passes them (typed or a mapping).
    :param expected: the pinned fingerprint.
    :param test_mode: the Pixian connection's ``test_mode`` extra (``None``: not set).
    """

    vendor: str
    options: dict[str, Any]
    vendor_options: Callable[[], Any]
    expected: str
    test_mode: Any = None


REMOVAL_CASES: dict[str, RemovalCase] = {
    # Pixelcut
    "pixelcut defaults": RemovalCase("pixelcut", {}, lambda: None, "e05ea72c12144874"),
    "pixelcut webp white crop margin": RemovalCase(
        "pixelcut",
        {"output_format": "webp", "background_color": "#FFF", "crop": True, "margin": "5%"},
        lambda: None,
        "86d00c4c64ae6798",
    ),
    "pixelcut jpeg max size quality": RemovalCase(
        "pixelcut",
        {"output_format": "jpg", "max_size": "800x600", "jpeg_quality": "80"},
        lambda: None,
        "782a8646b984d8bd",
    ),
    "pixelcut empty options": RemovalCase("pixelcut", {}, _pixelcut, "ea6434598b837a25"),
    "pixelcut automatic shadow": RemovalCase("pixelcut", {}, _pixelcut_shadow, "31e4b06464dd938b"),
    "pixelcut shadow opacity": RemovalCase(
        "pixelcut", {}, lambda: _pixelcut_shadow(opacity="0.25"), "3baa510fc5a7118e"
    ),
    "pixelcut shadow light": RemovalCase(
        "pixelcut", {"crop": "yes"}, lambda: _pixelcut_shadow(opacity=0.5, x=1, z="1.5"), "7b0d88d2b3e3ae57"
    ),
    "pixelcut shadow off": RemovalCase(
        "pixelcut", {}, lambda: _pixelcut_shadow(enabled=False), "ea6434598b837a25"
    ),
    "pixelcut native margins url": RemovalCase(
        "pixelcut",
        {"crop": True},
        lambda: _pixelcut(margin="10px", margin_left="5%", margin_top=" 3px ", result_delivery="url"),
        "0d37572d5b9ed624",
    ),
    "pixelcut mapping shadow true": RemovalCase("pixelcut", {}, lambda: {"shadow": True}, "0b5557ce3e7bd9aa"),
    "pixelcut mapping vendor shadow object": RemovalCase(
        "pixelcut",
        {"background_color": "rgb(0, 128, 255)"},
        lambda: {
            "shadow": {
                "enabled": True,
                "opacity": 0.4,
                "light_source": {"size": 0.2, "position": {"x": 0.1}},
            },
            "result_delivery": "url",
        },
        "318b580f60f9fa6c",
    ),
    "pixelcut mapping with a typed shadow": RemovalCase(
        "pixelcut", {}, _nested_shadow_mapping, "56cb995d94fe3f6b"
    ),
    # Pixian
    "pixian defaults": RemovalCase("pixian", {}, lambda: None, "4dac6bd53ae59b83"),
    "pixian connection test mode": RemovalCase(
        "pixian", {}, lambda: None, "4997939f25194de3", test_mode=True
    ),
    "pixian connection test mode text": RemovalCase(
        "pixian", {}, _pixian, "8daa252560228240", test_mode="false"
    ),
    "pixian test option": RemovalCase("pixian", {}, lambda: _pixian(test="true"), "82fa8aab4c42e63b"),
    "pixian production over test connection": RemovalCase(
        "pixian", {}, lambda: _pixian(test=False), "2647c44bde10af89", test_mode=True
    ),
    "pixian jpeg quality base64 max pixels": RemovalCase(
        "pixian",
        {"output_format": "jpeg", "jpeg_quality": 70},
        lambda: _pixian(max_pixels="1000000", input_encoding=" BASE64 ", jpeg_quality=95),
        "f12d9d791a9a182d",
    ),
    "pixian result margin": RemovalCase(
        "pixian", {"crop": True}, lambda: _pixian(result_margin="10px  20% 5px 15%"), "534d99be4c76c1a6"
    ),
    "pixian target size alignment": RemovalCase(
        "pixian",
        {"background_color": "navy"},
        lambda: _pixian(target_size="1920x1080", vertical_alignment="Top"),
        "5758a08777e7270d",
    ),
    "pixian delta png everything local": RemovalCase(
        "pixian",
        {"output_format": "webp", "crop": True, "margin": "10px 2.5%", "max_size": 512},
        lambda: _pixian(delta_png="on"),
        "b9bc09797d2effd6",
    ),
    "pixian mapping": RemovalCase(
        "pixian", {}, lambda: {"delta_png": "true", "max_pixels": "500"}, "ff04cfb9179cf54c", test_mode="1"
    ),
    "pixian mapping target size tuple": RemovalCase(
        "pixian", {}, lambda: {"target_size": (640, 480)}, "2196b8c3bd32d455"
    ),
    # Poof
    "poof defaults": RemovalCase("poof", {}, lambda: None, "ce9f9b845dcd2786"),
    "poof preview": RemovalCase("poof", {}, lambda: _poof(size="preview"), "c113565442687afe"),
    "poof size normalised": RemovalCase("poof", {}, lambda: _poof(size=" Medium "), "700a01101ab2ef12"),
    "poof mapping": RemovalCase("poof", {}, lambda: {"size": "small"}, "110e3b44552eeb0d"),
    "poof everything": RemovalCase(
        "poof",
        {"output_format": "webp", "background_color": "white", "crop": "1", "max_size": [512, 256]},
        lambda: _poof(size="large"),
        "3c6bdf1c9dd9eae6",
    ),
    "poof jpeg": RemovalCase(
        "poof", {"output_format": "JPEG", "jpeg_quality": 100}, lambda: None, "c1b5c6deb562b3b0"
    ),
}

GENERATE_CASES: dict[str, tuple[Callable[[], Any], str]] = {
    "generate scene": (lambda: _generate(scene="Marble"), "60ef042aa5681fe7"),
    "generate prompt and placement": (
        lambda: _generate(
            prompt=" a marble kitchen counter ",
            negative_prompt="people, text",
            image_transform={"scale": "0.5", "x_center": 0.4},
        ),
        "398cc0d19422d80b",
    ),
    "generate url delivery": (
        lambda: _generate(scene="", image_transform={"y_center": 1}, result_delivery="url"),
        "178704cab19fba18",
    ),
    "generate defaults": (_generate, "c886937a09727ed0"),
}


def _hook(vendor: str, monkeypatch: pytest.MonkeyPatch, test_mode: Any = None) -> Any:
    from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
    from airflow_provider_bgremoval.hooks.pixian import PixianHook
    from airflow_provider_bgremoval.hooks.poof import PoofHook

    extra = None if test_mode is None else {"test_mode": test_mode}
    login = "px_pin_id" if vendor == "pixian" else None
    set_connection(monkeypatch, f"{vendor}_default", vendor, login=login, password="pin_secret", extra=extra)
    hook_class = {"pixelcut": PixelcutHook, "pixian": PixianHook, "poof": PoofHook}[vendor]
    return hook_class()


@pytest.mark.parametrize("case", list(REMOVAL_CASES))
def test_removal_fingerprints_are_pinned(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_bgremoval.pipeline.processors import RemovalProcessor

    spec = REMOVAL_CASES[case]
    hook = _hook(spec.vendor, monkeypatch, spec.test_mode)
    processor = RemovalProcessor(hook, RemovalOptions.create(**spec.options), spec.vendor_options())
    assert processor.fingerprint == spec.expected


@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_generate_fingerprints_are_pinned(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_bgremoval.pipeline.processors import GenerationProcessor

    build, expected = GENERATE_CASES[case]
    processor = GenerationProcessor(_hook("pixelcut", monkeypatch), build())
    assert processor.fingerprint == expected


# -- how every option model reads user input ---------------------------------------------------------


def _option_models() -> list[Any]:
    from airflow_provider_bgremoval.vendors.pixelcut import (
        PixelcutGenerateOptions,
        PixelcutImageTransform,
        PixelcutOptions,
        PixelcutShadow,
    )
    from airflow_provider_bgremoval.vendors.pixian import PixianOptions
    from airflow_provider_bgremoval.vendors.poof import PoofOptions

    return [
        RemovalOptions,
        PixelcutOptions,
        PixelcutShadow,
        PixelcutGenerateOptions,
        PixelcutImageTransform,
        PixianOptions,
        PoofOptions,
    ]


@pytest.mark.parametrize("model", _option_models(), ids=lambda model: model.__name__)
def test_every_model_has_a_valid_json_schema_that_refuses_unknown_keys(model: Any) -> None:
    import jsonschema

    schema = model.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["description"]  # the docstring's first paragraph
    fields = {f.name for f in dataclasses.fields(model)}
    assert set(schema["properties"]) == fields
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{model.__name__}.{name} has no description"
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate({})  # every option has a default
    assert not validator.is_valid({"no_such_option": 1})


#: values the models document as accepted (their ``:param:`` lines, docs/options.md)
DOCUMENTED_VALUES = [
    ("RemovalOptions", {"max_size": "800x600"}),
    ("RemovalOptions", {"max_size": "800×600"}),
    ("RemovalOptions", {"max_size": "800 600"}),
    ("RemovalOptions", {"max_size": [800, 600]}),
    ("RemovalOptions", {"max_size": 512}),
    ("RemovalOptions", {"max_size": "512"}),
    ("RemovalOptions", {"crop": True, "margin": "10px 20px"}),
    ("PixianOptions", {"target_size": "1920 1080"}),
    ("PixianOptions", {"target_size": "1920x1080"}),
    ("PixianOptions", {"target_size": [1920, 1080]}),
    ("PixelcutGenerateOptions", {"scene": "Marble"}),
    ("PixelcutGenerateOptions", {"scene": " WOOD "}),
    ("PixelcutGenerateOptions", {"scene": ""}),
    ("PixelcutGenerateOptions", {"scene": None}),
]
#: values both the model and its schema refuse
REFUSED_VALUES = [
    ("RemovalOptions", {"max_size": 0}),
    ("RemovalOptions", {"max_size": "big"}),
    ("RemovalOptions", {"max_size": [800, 600, 1]}),
    ("PixianOptions", {"target_size": 1920}),  # not a square option
    ("PixelcutGenerateOptions", {"scene": "beach"}),
]


def _model_named(name: str) -> Any:
    return {model.__name__: model for model in _option_models()}[name]


@pytest.mark.parametrize(("model_name", "value"), DOCUMENTED_VALUES, ids=repr)
def test_the_json_schema_takes_every_value_the_model_documents(
    model_name: str, value: dict[str, Any]
) -> None:
    import jsonschema

    model = _model_named(model_name)
    model.coerce(value)
    jsonschema.validate(value, model.model_json_schema())


@pytest.mark.parametrize(("model_name", "value"), REFUSED_VALUES, ids=repr)
def test_the_json_schema_refuses_what_the_model_refuses(model_name: str, value: dict[str, Any]) -> None:
    import jsonschema

    model = _model_named(model_name)
    with pytest.raises(InvalidOptionError):
        model.coerce(value)
    assert not jsonschema.Draft202012Validator(model.model_json_schema()).is_valid(value)


@pytest.mark.parametrize("model", _option_models(), ids=lambda model: model.__name__)
def test_every_schema_example_is_a_value_the_model_takes(model: Any) -> None:
    import jsonschema

    schema = model.model_json_schema()
    for name, prop in schema["properties"].items():
        for example in prop.get("examples", ()):
            value = {name: example, **({"crop": True} if name == "margin" else {})}
            model.coerce(value)
            jsonschema.validate(value, schema)


def test_json_schema_carries_choices_ranges_and_defaults() -> None:
    from airflow_provider_bgremoval.vendors.pixian import PixianOptions
    from airflow_provider_bgremoval.vendors.poof import PoofOptions

    unified = RemovalOptions.model_json_schema()["properties"]
    assert unified["output_format"]["enum"] == ["png", "jpeg", "webp"]
    assert unified["output_format"]["default"] == "png"
    assert (unified["jpeg_quality"]["minimum"], unified["jpeg_quality"]["maximum"]) == (1, 100)
    assert unified["margin"]["type"] == ["string", "null"]
    assert PoofOptions.model_json_schema()["properties"]["size"]["enum"] == [
        "full",
        "preview",
        "small",
        "medium",
        "large",
    ]
    max_pixels = PixianOptions.model_json_schema()["properties"]["max_pixels"]["anyOf"][0]
    assert (max_pixels["minimum"], max_pixels["maximum"]) == (100, 25_000_000)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: RemovalOptions(crop=""), False),
        (lambda: _pixian(test="false").test, False),
        (lambda: _pixian(test="").test, None),  # optional: blank is "not set" (the connection's test_mode)
        (lambda: _pixian(delta_png=" OFF ").delta_png, False),
        (lambda: _pixian(delta_png="Yes").delta_png, True),
        (lambda: _pixelcut_shadow(enabled="0").shadow.enabled, False),
        (lambda: _pixelcut(shadow="").shadow, None),
        (lambda: _pixelcut(shadow="on").shadow.automatic, True),
    ],
)
def test_one_boolean_rule_everywhere(build: Callable[[], Any], expected: Any) -> None:
    """
    ``true/1/yes/on`` and ``false/0/no/off/""`` for every boolean option (any case and spaces); an
    optional one (``None`` defers to a default elsewhere) reads blank text as not set.
    """
    result = build()
    assert (result.crop if isinstance(result, RemovalOptions) else result) is expected


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: RemovalOptions(crop="t"), "crop"),
        (lambda: _pixian(test=2), "test"),
        (lambda: _pixelcut(shadow="sometimes"), "shadow"),
        (lambda: _pixelcut_shadow(enabled=None), "shadow.enabled"),
    ],
)
def test_anything_else_is_not_a_boolean(build: Callable[[], Any], parameter: str) -> None:
    with pytest.raises(InvalidOptionError, match="is not a boolean") as info:
        build()
    assert info.value.parameter == parameter


def test_blank_text_means_not_set_for_optional_options() -> None:
    assert (
        RemovalOptions(background_color=" ", margin="", max_size="").as_dict() == RemovalOptions().as_dict()
    )
    assert _pixian(max_pixels="", target_size=" ", result_margin="", jpeg_quality="") == _pixian()
    assert _pixelcut(margin=" ", margin_top="") == _pixelcut()
    assert _pixelcut_shadow(opacity="").shadow == _pixelcut_shadow().shadow
    assert _generate(prompt=" ", scene="") == _generate()
    with pytest.raises(InvalidOptionError) as info:
        RemovalOptions(jpeg_quality="")  # not optional: blank is not a value
    assert info.value.parameter == "jpeg_quality"


def test_numbers_accept_numeric_text_but_not_booleans_or_infinities() -> None:
    assert _pixian(max_pixels=" 1000 ", jpeg_quality=80.0) == _pixian(max_pixels=1000, jpeg_quality=80)
    for bad in (True, "1e400", float("inf"), "many", 80.5):
        with pytest.raises(InvalidOptionError) as info:
            _pixian(jpeg_quality=bad)
        assert info.value.parameter == "jpeg_quality"


def test_errors_name_the_parameter_with_a_plain_message() -> None:
    with pytest.raises(InvalidOptionError) as info:
        _pixelcut(shadow={"opacity": 2})
    assert info.value.parameter == "shadow.opacity"
    assert str(info.value).endswith(
        "invalid 'shadow.opacity': input should be less than or equal to 1 (got 2)"
    )
    with pytest.raises(InvalidOptionError) as info:
        RemovalOptions(background_colour="red")  # type: ignore[call-arg]
    assert info.value.parameter == "background_colour"
    assert "expected one of output_format, background_color" in info.value.message
    with pytest.raises(InvalidOptionError) as info:
        RemovalOptions.coerce({"crop": "maybe"})
    assert info.value.parameter == "crop"
    assert "Value error" not in str(info.value)


def test_replace_revalidates_and_coerce_keeps_an_instance() -> None:
    options = RemovalOptions.create(crop=True, margin="5%")
    assert RemovalOptions.coerce(options) is options
    assert RemovalOptions.coerce(None) == RemovalOptions()
    assert RemovalOptions.coerce({"output_format": "jpg"}).output_format == "jpeg"
    assert dataclasses.replace(options, max_size="10x20").max_size == (10, 20)
    with pytest.raises(InvalidOptionError) as info:
        dataclasses.replace(options, crop=False)
    assert info.value.parameter == "margin"
    with pytest.raises(InvalidOptionError) as info:
        RemovalOptions.coerce(["png"])
    assert info.value.parameter == "vendor_options"


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        ("800x600", {}, (800, 600)),
        (" 800 × 600 ", {}, (800, 600)),
        ("1920 1080", {}, (1920, 1080)),
        ([10.0, "20"], {}, (10, 20)),
        (512, {"square": True}, (512, 512)),
        ("512", {"square": True}, (512, 512)),
        ("100000x1", {}, (100_000, 1)),
        ("[1000, 1000]", {"square": True}, (1000, 1000)),  # a template of an array Param, rendered
        (" (800, 600) ", {}, (800, 600)),  # ... of a tuple
    ],
)
def test_parse_size(value: Any, kwargs: dict[str, Any], expected: tuple[int, int]) -> None:
    assert parse_size(value, **kwargs) == expected


@pytest.mark.parametrize(
    ("value", "kwargs", "fragment"),
    [
        (512, {}, "WIDTHxHEIGHT"),
        ("512", {}, "WIDTHxHEIGHT"),
        ((1, 2, 3), {}, "WIDTHxHEIGHT"),
        ((True, 2), {}, "whole number"),
        ("0x5", {}, "below 1"),
        ("30x20001", {"max_side": 20_000}, "over 20,000"),
        ("[1000, 0]", {}, "below 1"),
        ("[1000, 1000", {}, "not a list"),
    ],
)
def test_parse_size_errors(value: Any, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_size(value, **kwargs)


def test_load_list_reads_what_a_template_renders() -> None:
    """A whole-value template of a list or dict renders as JSON or as Python text: both read back."""
    assert load_list('["a", "b"]', "conn_id") == ["a", "b"]
    assert load_list("['a', 'b']", "conn_id") == ["a", "b"]
    assert load_list("{'a': 5}", "thresholds") == {"a": 5}
    given = [{"name": "thumb"}]
    assert load_list(given, "renditions") is given  # not text: as given
    with pytest.raises(InvalidOptionError, match="not a list or mapping") as info:
        load_list("['a', ", "conn_id")
    assert info.value.parameter == "conn_id"


def test_parse_flag_outside_a_model_names_the_parameter() -> None:
    assert parse_flag(" Off ", parameter="test_mode") is False
    with pytest.raises(InvalidOptionError) as info:
        parse_flag("sometimes", parameter="test_mode")
    assert info.value.parameter == "test_mode"
    with pytest.raises(ValueError, match="not a boolean"):
        parse_flag("sometimes")
