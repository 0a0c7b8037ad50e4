"""``PixianOptions(delta_png="auto")``: the per-image decision (local, before the call) and the options
fingerprint it must not change (no I/O; the end-to-end check over the sandbox is in
tests/unit/hooks/test_pixian_delta.py)."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.options import RemovalOptions, split_options
from airflow_provider_bgremoval.vendors.base import ImageInput
from airflow_provider_bgremoval.vendors.pixian import (
    DELTA_CAPABILITIES,
    PIXIAN_SPEC,
    PixianOptions,
    PixianWire,
)
from tests.support.connections import set_connection
from tests.support.reply_strategies import png_bytes
from tests.unit.vendors.test_pixian import build, make_wire


def encoded(mode: str = "RGB", size: tuple[int, int] = (40, 30), fmt: str = "PNG", **params: Any) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format=fmt, **params)
    return out.getvalue()


def image_input(data: bytes) -> ImageInput:
    return ImageInput(data=data, filename="photo", content_type="application/octet-stream")


RGB_PNG = image_input(encoded())


def checked(options: RemovalOptions, vendor_options: Any, *, image_url: str | None = None) -> PixianOptions:
    return PixianWire.check_call(options, vendor_options, image_url=image_url)


# -- the option -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("auto", "auto"),
        (" AUTO ", "auto"),
        ("Auto", "auto"),
        (True, True),
        ("on", True),
        ("0", False),
        ("", None),  # blank: not set, the hook's delta_png_default applies (a template that rendered nothing)
        (" ", None),
        (None, None),
    ],
)
def test_delta_png_reads_auto_and_booleans(given: Any, expected: Any) -> None:
    assert PixianOptions(delta_png=given).delta_png == expected
    assert PixianOptions.coerce({"delta_png": given}).delta_png == expected


def test_delta_png_refuses_other_words() -> None:
    with pytest.raises(InvalidOptionError) as info:
        PixianOptions(delta_png="automatic")
    assert info.value.parameter == "delta_png"


def test_auto_accepts_geometry_options_and_takes_the_normal_result_with_them() -> None:
    """``True`` refuses options Pixian ignores with a delta; ``"auto"`` just does not use one."""
    with pytest.raises(InvalidOptionError):
        PixianOptions(delta_png=True, target_size=(100, 100))
    opts = PixianOptions(delta_png="auto", target_size=(100, 100), vertical_alignment="top")
    wire = make_wire()
    assert wire.delta_fallback(RGB_PNG, opts) == "target_size is set (Pixian ignores it with delta_png)"
    _, fields, _ = build(wire, RemovalOptions(), checked(RemovalOptions(), opts))
    assert fields["output.format"] == "png"
    assert fields["result.target_size"] == "100 100"


# -- the fingerprint ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [{}, {"max_pixels": 1_000_000, "input_encoding": "base64"}, {"test": True}, {"result_margin": "5px"}],
)
def test_auto_records_as_the_default_in_as_dict(fields: dict[str, Any]) -> None:
    unset = PixianOptions(**fields)
    assert unset.delta_png is None  # not set: the hook's delta_png_default
    for same_output in ("auto", False):
        assert PixianOptions(**fields, delta_png=same_output).as_dict() == unset.as_dict()
    assert unset.as_dict()["delta_png"] is False  # as before "auto" and None existed: same fingerprints


def test_true_is_recorded_it_shapes_the_output() -> None:
    """``True`` runs every unified option locally (not Pixian's crop or background): another output."""
    assert PixianOptions(delta_png=True).as_dict()["delta_png"] is True


def test_auto_keeps_the_removal_fingerprint_and_true_changes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_bgremoval.hooks.pixian import PixianHook
    from airflow_provider_bgremoval.pipeline.processors import RemovalProcessor

    set_connection(monkeypatch, "pixian_default", "pixian", login="px_id", password="px_secret")
    hook = PixianHook()

    def fingerprint(vendor_options: Any, options: RemovalOptions | None = None) -> str:
        return RemovalProcessor(hook, options or RemovalOptions(), vendor_options).fingerprint

    for base in (PixianOptions(), PixianOptions(max_pixels=2_000_000)):
        assert fingerprint(replace(base, delta_png="auto")) == fingerprint(base)
        assert fingerprint(replace(base, delta_png=False)) == fingerprint(base)
        assert fingerprint(replace(base, delta_png=True)) != fingerprint(base)
    # the hook's default for unset calls is transfer-only too: not in its output settings
    auto_hook = PixianHook(delta_png_default="auto")
    assert auto_hook.output_settings(None) == hook.output_settings(None)
    for given in (None, PixianOptions(), {"max_pixels": "500"}):
        assert RemovalProcessor(auto_hook, RemovalOptions(), given).fingerprint == fingerprint(given)
    webp = RemovalOptions(output_format="webp", max_size=(512, 512))
    assert fingerprint(PixianOptions(delta_png="auto"), webp) == fingerprint(PixianOptions(), webp)


# -- the per-call part: the unified options (check_call) ----------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"output_format": "webp"},
        {"max_size": (256, 256)},
        {"crop": True, "margin": "5%"},  # a local crop: the same on the decoded result
        {"crop": True, "margin": "5%", "background_color": "#ffffff"},
    ],
)
def test_auto_stays_where_pixian_would_return_a_plain_transparent_png(options: dict[str, Any]) -> None:
    unified = RemovalOptions.create(**options)
    opts = checked(unified, {"delta_png": "auto"})
    assert opts.delta_png == "auto"
    wire = make_wire()
    assert wire.capabilities_for(opts) is DELTA_CAPABILITIES
    # both plans agree, so the same local steps run on the normal and on the decoded result
    assert split_options(unified, DELTA_CAPABILITIES) == split_options(unified, PIXIAN_SPEC.capabilities)
    _, fields, _ = build(wire, unified, opts, RGB_PNG)
    assert fields == {"output.format": "delta_png"}


@pytest.mark.parametrize(
    "options",
    [
        {"crop": True},  # Pixian's own crop_to_foreground
        {"background_color": "#0055ff"},  # Pixian's own background.color
        {"output_format": "jpeg"},  # Pixian's JPEG (flattened on white)
    ],
)
def test_auto_resolves_to_the_normal_result_where_pixian_would_do_more(options: dict[str, Any]) -> None:
    unified = RemovalOptions.create(**options)
    opts = checked(unified, {"delta_png": "auto"})
    assert opts.delta_png is False
    wire = make_wire()
    plan = split_options(unified, wire.capabilities_for(opts))
    assert plan == split_options(unified, PIXIAN_SPEC.capabilities)  # exactly the normal call
    _, fields, _ = build(wire, unified, opts, RGB_PNG)
    assert fields["output.format"] != "delta_png"


# -- the per-image part (the image's header) ------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encoded("RGB", fmt="JPEG"), None),
        (encoded("L", fmt="JPEG"), None),
        (encoded("RGB"), None),
        (encoded("L"), None),
        (encoded("RGBA"), "a PNG RGBA input"),
        (encoded("LA"), "a PNG LA input"),
        (encoded("P"), "a PNG P input"),
        (encoded("RGB", fmt="WEBP"), "a WEBP RGB input"),
        (b"not an image", "the input's header is unreadable"),
        # Pillow reads these as mode RGB/L: the PNG header's bit depth and tRNS chunk show them
        (png_bytes(40, 30, bit_depth=16), "a 16-bit PNG RGB input"),
        (encoded("L", bits=4), "a 4-bit PNG L input"),
        (encoded("RGB", transparency=(0, 0, 0)), "a PNG RGB input with tRNS transparency"),
        (encoded("L", transparency=0), "a PNG L input with tRNS transparency"),
    ],
    ids=[
        "jpeg",
        "gray jpeg",
        "png",
        "gray png",
        "rgba",
        "la",
        "palette",
        "webp",
        "garbage",
        "16-bit rgb",
        "4-bit gray",
        "rgb trns",
        "gray trns",
    ],
)
def test_decision_by_the_input(data: bytes, reason: str | None) -> None:
    wire = make_wire()
    opts = PixianOptions(delta_png="auto")
    fallback = wire.delta_fallback(image_input(data), opts)
    assert fallback == reason if reason is None else (fallback or "").startswith(reason)
    assert wire.uses_delta(image_input(data), opts) is (reason is None)


@pytest.mark.parametrize(
    "data",
    [png_bytes(40, 30, bit_depth=16), encoded("RGB", transparency=(0, 0, 0))],
    ids=["16-bit rgb", "rgb trns"],
)
def test_an_rgb_png_that_is_not_opaque_8_bit_takes_the_normal_call(data: bytes) -> None:
    """Pillow opens both as mode ``RGB``; a delta of them would not decode to Pixian's normal result."""
    wire = make_wire()
    _, fields, _ = build(wire, RemovalOptions(), PixianOptions(delta_png="auto"), image_input(data))
    assert fields == {"output.format": "png"}


def test_decision_by_max_pixels() -> None:
    wire = make_wire()
    photo = image_input(encoded(size=(200, 100)))
    assert wire.uses_delta(photo, PixianOptions(delta_png="auto", max_pixels=20_000))
    reason = wire.delta_fallback(photo, PixianOptions(delta_png="auto", max_pixels=19_999))
    assert reason == "20,000 pixels is over max_pixels (19,999): Pixian would shrink it"


def test_decision_over_the_default_max_pixels() -> None:
    """25,000,000 px is the default ``max_pixels``; the 32,000,000 px upload cap is above it."""
    wire = make_wire()
    over = image_input(encoded("L", size=(5001, 5000)))  # a flat image: small bytes
    assert wire.delta_fallback(over, PixianOptions(delta_png="auto")) == (
        "25,005,000 pixels is over max_pixels (25,000,000): Pixian would shrink it"
    )
    _, fields, _ = build(wire, RemovalOptions(), PixianOptions(delta_png="auto"), over)
    assert fields == {"output.format": "png"}
    assert wire.uses_delta(image_input(encoded("L", size=(5000, 5000))), PixianOptions(delta_png="auto"))


def test_decision_without_bytes_and_in_test_mode() -> None:
    url = ImageInput(url="https://cdn.example.com/a.jpg")
    assert checked(RemovalOptions(), {"delta_png": "auto"}, image_url=url.url).delta_png == "auto"
    wire = make_wire()
    assert (
        wire.delta_fallback(url, {"delta_png": "auto"}) == "no image bytes to decode a delta with (image_url)"
    )
    _, fields, _ = build(wire, RemovalOptions(), {"delta_png": "auto"}, url)
    assert fields == {"image.url": "https://cdn.example.com/a.jpg", "output.format": "png"}
    test_reason = "test mode (a delta cannot carry the watermark on solid pixels)"
    assert wire.delta_fallback(RGB_PNG, {"delta_png": "auto", "test": True}) == test_reason
    assert make_wire(test_mode=True).delta_fallback(RGB_PNG, {"delta_png": "auto"}) == test_reason
    assert make_wire(test_mode=True).uses_delta(RGB_PNG, {"delta_png": "auto", "test": False})


def test_true_false_and_unset_do_not_look_at_the_image() -> None:
    wire = make_wire()
    rgba = image_input(encoded("RGBA"))
    assert wire.uses_delta(rgba, PixianOptions(delta_png=True))
    assert not wire.uses_delta(RGB_PNG, PixianOptions(delta_png=False))
    assert not wire.uses_delta(RGB_PNG, PixianOptions())  # unset on the wire: the hook fills it in
    assert wire.capabilities_for(PixianOptions()) is PIXIAN_SPEC.capabilities


@pytest.mark.parametrize(
    ("given", "expected"), [("auto", "auto"), (" Auto", "auto"), ("yes", True), (False, False)]
)
def test_the_hook_default_reads_like_the_option(
    given: Any, expected: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
    from airflow_provider_bgremoval.hooks.pixian import PixianHook

    assert PixianHook(delta_png_default=given).delta_png_default == expected
    set_connection(monkeypatch, "pixian_default", "pixian", login="px_id", password="px_secret")
    hook = BackgroundRemovalHook.get_hook("pixian_default", {"delta_png_default": given})
    assert isinstance(hook, PixianHook)
    assert hook.delta_png_default == expected
    with pytest.raises(InvalidOptionError):
        PixianHook(delta_png_default="sometimes")
