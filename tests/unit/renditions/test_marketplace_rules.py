"""
Every built-in preset against /work/shared/MARKETPLACES.md, rule by rule: generated cut-outs rendered by
the real renderer, the output's bytes decoded and measured here (not the preset's fields).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image, ImageCms

from airflow_provider_bgremoval.imaging import bomb_warnings_ignored
from airflow_provider_bgremoval.renditions.compliance import subject_box
from airflow_provider_bgremoval.renditions.renderer import (
    RenderedRendition,
    RenderFailure,
    RenderOutcome,
    prepare_master,
    render,
)
from airflow_provider_bgremoval.renditions.spec import parse_renditions
from tests.unit.renditions.synthetic import decode, png_bytes, product_photo, rgb_profile, soft_subject

WHITE = (255, 255, 255)
PRESETS = ("amazon_main", "google_merchant", "shopify_square", "ebay")


def _render(master: Image.Image | bytes, preset: str, **fields: Any) -> RenderOutcome:
    (outcome,) = render(master, parse_renditions([{"name": "r", "preset": preset, **fields}]))
    return outcome


def _rendered(master: Image.Image | bytes, preset: str, **fields: Any) -> RenderedRendition:
    outcome = _render(master, preset, **fields)
    assert isinstance(outcome, RenderedRendition), outcome
    return outcome


def _box_fill(image: Image.Image) -> float:
    """Fill as MARKETPLACES.md measures it: the non-white box's longer side over the side it runs along."""
    box = subject_box(image.convert("RGB"), WHITE, tolerance=2)
    assert box is not None
    width, height = box[2] - box[0], box[3] - box[1]
    return width / image.width if width >= height else height / image.height


def _ring(image: Image.Image) -> set[tuple[int, ...]]:
    """The colours of the outermost ring of pixels."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    ring = [(x, y) for x in range(w) for y in (0, h - 1)] + [(x, y) for y in range(h) for x in (0, w - 1)]
    return {rgb.getpixel(xy) for xy in ring}  # type: ignore[misc]


class TestAmazonMain:
    def test_background_is_exactly_white(self) -> None:
        out = decode(_rendered(product_photo((2400, 2000)), "amazon_main").data)
        assert out.mode == "RGB"
        assert _ring(out) == {WHITE}
        corner = out.crop((0, 0, out.width // 20, out.height // 20))
        assert corner.getextrema() == ((255, 255),) * 3

    def test_near_white_is_refused(self) -> None:
        rendered = _rendered(product_photo((2400, 2000)), "amazon_main", background="rgb(248, 250, 252)")
        assert _ring(decode(rendered.data)) != {WHITE}
        assert not rendered.compliant
        assert "border_white" in rendered.verdict.failed

    @pytest.mark.parametrize("size", [(2400, 2000), (1200, 2600)])
    def test_fill_is_at_least_85_percent_by_the_box(self, size: tuple[int, int]) -> None:
        rendered = _rendered(product_photo(size), "amazon_main")
        out = decode(rendered.data)
        assert out.width == out.height
        assert 0.85 <= _box_fill(out) <= 0.86
        assert rendered.compliant

    @pytest.mark.parametrize("horizontal", [True, False])
    def test_a_pencil_fills_by_its_long_side(self, horizontal: bool) -> None:
        size, box = ((3000, 200), (100, 90, 2900, 110)) if horizontal else ((200, 3000), (90, 100, 110, 2900))
        rendered = _rendered(soft_subject(size, box, edge=1), "amazon_main")
        out = decode(rendered.data)
        assert out.width == out.height
        assert 0.85 <= _box_fill(out) <= 0.86
        assert _ring(out) == {WHITE}
        assert rendered.compliant

    def test_a_subject_touching_the_border_gets_a_white_margin(self) -> None:
        rendered = _rendered(soft_subject((1500, 1200), (0, 0, 1500, 900), edge=2), "amazon_main")
        out = decode(rendered.data)
        assert _ring(out) == {WHITE}
        assert 0.85 <= _box_fill(out) <= 0.86
        assert rendered.compliant

    def test_the_long_side_reaches_1000_from_a_large_master(self) -> None:
        rendered = _rendered(product_photo((1800, 1800)), "amazon_main")
        assert decode(rendered.data).width >= 1000
        assert rendered.compliant

    def test_a_tiny_master_is_not_upscaled_and_is_refused_below_500(self) -> None:
        rendered = _rendered(soft_subject((300, 300), (50, 50, 250, 250)), "amazon_main")
        out = decode(rendered.data)
        assert out.size == (235, 235)  # the subject's own pixels: 200 / 0.85
        assert not rendered.compliant
        assert {"long_side_min_1000", "long_side_hard_min_500"} <= set(rendered.verdict.failed)
        assert rendered.layout.refused_upscale > 4

    def test_a_tiny_master_is_upscaled_only_when_asked(self) -> None:
        rendered = _rendered(soft_subject((300, 300), (50, 50, 250, 250)), "amazon_main", upscale=True)
        out = decode(rendered.data)
        assert out.size == (1000, 1000)
        assert 0.85 <= _box_fill(out) <= 0.86
        assert rendered.compliant
        assert rendered.verdict.advice == ("long_side_recommended_1600",)

    def test_a_huge_master_is_scaled_to_10000_per_side(self) -> None:
        rendered = _rendered(soft_subject((10_600, 300), (50, 100, 10_550, 200), edge=1), "amazon_main")
        with bomb_warnings_ignored():
            assert decode(rendered.data).size == (10_000, 10_000)
        assert rendered.measured.nbytes <= 10_000_000
        assert rendered.compliant

    def test_a_file_over_10_mb_is_refused(self) -> None:
        # a textured photo as lossless PNG: every pixel its own, far over 10,000,000 bytes
        rendered = _rendered(product_photo((5000, 5000), texture=True), "amazon_main", format="png")
        assert len(rendered.data) > 10_000_000
        assert not rendered.compliant
        assert rendered.verdict.failed == ("file_limits",)

    @pytest.mark.parametrize(("fmt", "allowed"), [("jpeg", True), ("png", True), ("webp", False)])
    def test_webp_is_not_accepted(self, fmt: str, allowed: bool) -> None:
        rendered = _rendered(product_photo((2400, 2000)), "amazon_main", format=fmt)
        assert decode(rendered.data).format == fmt.upper()
        assert ("format" in rendered.verdict.failed) is not allowed

    def test_png_transparency_is_flattened_onto_white(self) -> None:
        rendered = _rendered(product_photo((2400, 2000)), "amazon_main", format="png")
        out = decode(rendered.data)
        assert out.mode == "RGB"  # no alpha channel written
        assert _ring(out) == {WHITE}
        assert rendered.compliant

    def test_a_transparent_png_is_refused(self) -> None:
        rendered = _rendered(
            product_photo((2400, 2000)), "amazon_main", format="png", background="transparent"
        )
        assert not rendered.compliant
        assert {"opaque", "border_white"} <= set(rendered.verdict.failed)

    def test_an_adobe_rgb_like_master_is_converted_to_srgb_and_tagged(self) -> None:
        # a wide-gamut master (red and green primaries swapped): sRGB pixels out, the sRGB profile embedded
        master = Image.new("RGBA", (1600, 1600), (0, 0, 0, 0))
        master.paste((255, 0, 0, 255), (200, 200, 1400, 1400))
        rendered = _rendered(png_bytes(master, icc_profile=rgb_profile()), "amazon_main")
        out = decode(rendered.data)
        red, green, blue = out.getpixel((out.width // 2, out.height // 2))  # type: ignore[misc]
        assert green > 200 and red < 60 and blue < 60
        description = ImageCms.getProfileDescription(
            ImageCms.ImageCmsProfile(io.BytesIO(out.info["icc_profile"]))
        )
        assert description.lower().startswith("srgb")
        assert rendered.compliant

    def test_the_srgb_profile_is_dropped_when_asked(self) -> None:
        rendered = _rendered(product_photo((2400, 2000)), "amazon_main", embed_srgb=False)
        assert "icc_profile" not in decode(rendered.data).info
        assert rendered.compliant  # untagged is read as sRGB

    def test_a_cmyk_master_is_converted(self) -> None:
        cmyk = Image.new("CMYK", (1600, 1600), (0, 0, 0, 0))
        cmyk.paste((0, 255, 255, 0), (200, 200, 1400, 1400))  # red
        out = io.BytesIO()
        cmyk.save(out, format="TIFF")
        rendered = _rendered(out.getvalue(), "amazon_main")
        image = decode(rendered.data)
        assert image.mode == "RGB"
        red, green, blue = image.getpixel((image.width // 2, image.height // 2))  # type: ignore[misc]
        assert red > 200 and green < 60 and blue < 60


class TestGoogleMerchant:
    def test_a_square_white_canvas_filled_85_percent(self) -> None:
        rendered = _rendered(product_photo((2400, 2000)), "google_merchant")
        out = decode(rendered.data)
        assert out.width == out.height
        assert _ring(out) == {WHITE}
        assert 0.85 <= _box_fill(out) <= 0.86
        assert rendered.compliant and not rendered.verdict.advice

    def test_below_100_px_is_refused(self) -> None:
        rendered = _rendered(soft_subject((80, 80), (10, 10, 70, 70)), "google_merchant")
        assert decode(rendered.data).width < 100
        assert "short_side_min_100" in rendered.verdict.failed

    def test_under_800_px_is_advice_only(self) -> None:
        rendered = _rendered(soft_subject((300, 300), (50, 50, 250, 250)), "google_merchant")
        assert decode(rendered.data).size == (235, 235)
        assert rendered.compliant and rendered.verdict.advice == ("recommended_800",)

    def test_a_huge_master_stays_within_64_megapixels_and_16_mb(self) -> None:
        rendered = _rendered(soft_subject((10_600, 300), (50, 100, 10_550, 200), edge=1), "google_merchant")
        out = decode(rendered.data)
        assert out.width * out.height <= 64_000_000
        assert rendered.measured.nbytes <= 16_000_000
        assert rendered.compliant

    @pytest.mark.parametrize(("fmt", "allowed"), [("jpeg", True), ("png", True), ("webp", True)])
    def test_formats(self, fmt: str, allowed: bool) -> None:
        rendered = _rendered(product_photo((1600, 1600)), "google_merchant", format=fmt)
        assert decode(rendered.data).format == fmt.upper()
        assert ("format" in rendered.verdict.failed) is not allowed


class TestShopify:
    def test_a_2048_square(self) -> None:
        rendered = _rendered(product_photo((3000, 2400)), "shopify_square")
        out = decode(rendered.data)
        assert out.size == (2048, 2048)
        assert _ring(out) == {WHITE}
        assert rendered.compliant

    def test_every_image_gets_the_same_aspect(self) -> None:
        sizes = {
            decode(_rendered(product_photo(size), "shopify_square").data).size
            for size in [(3000, 900), (900, 3000)]
        }
        assert sizes == {(2048, 2048)}


class TestSubjectTouchingTheBorder:
    """eBay and Shopify ask for no background: a subject reaching the canvas edge is not a failure."""

    def test_ebay_keeps_the_cut_out_s_frame_and_is_compliant(self) -> None:
        rendered = _rendered(soft_subject((1500, 1200), (0, 0, 1500, 900), edge=2), "ebay")
        out = decode(rendered.data)
        assert out.size == (1500, 1200)
        assert _ring(out) != {WHITE}  # the subject is on the edge
        assert out.crop((0, 1000, 1500, 1200)).getextrema() == ((255, 255),) * 3  # the rest is white
        assert rendered.compliant, rendered.verdict.as_dict()

    def test_shopify_contains_a_wide_subject_edge_to_edge_and_is_compliant(self) -> None:
        rendered = _rendered(soft_subject((3000, 2400), (0, 600, 3000, 1800), edge=2), "shopify_square")
        out = decode(rendered.data)
        assert out.size == (2048, 2048)
        assert out.crop((0, 0, 2048, 300)).getextrema() == ((255, 255),) * 3
        assert rendered.compliant, rendered.verdict.as_dict()

    @pytest.mark.parametrize("bottom", [898, 903, 904, 906])
    @pytest.mark.parametrize(
        "fields",
        [
            {"preset": "ebay", "subsampling": "4:2:0", "quality": 60},
            {"format": "webp", "background": "#ffffff", "quality": 50},
            {"format": "jpeg", "background": "#3366cc", "quality": 40, "max_size": 700},
        ],
    )
    def test_a_lossy_encoder_s_spread_at_the_subject_is_not_taken_for_the_background(
        self, bottom: int, fields: dict[str, Any]
    ) -> None:
        # the subject's edge mid-block: JPEG's chroma upsampling and WebP's loop filter smear it into
        # the next block, which is not the background the spec wrote wrong
        master = soft_subject((1500, 1200), (0, 0, 1500, bottom), colour=(0, 200, 0), edge=2)
        (outcome,) = render(master, parse_renditions([{"name": "r", **fields}]))
        assert isinstance(outcome, RenderedRendition)
        assert "background" not in outcome.verdict.failed, outcome.verdict.as_dict()

    def test_amazon_s_own_rule_still_reads_the_whole_border(self) -> None:
        # without its fill, Amazon's square is the cut-out's width: the subject on its edges fails
        # Amazon's pure-white border rule; the spec's background check reads the open border only
        rendered = _rendered(soft_subject((1500, 1200), (0, 0, 1500, 900), edge=2), "amazon_main", fill=None)
        assert decode(rendered.data).size == (1500, 1500)
        assert rendered.compliant is False
        assert "border_white" in rendered.verdict.failed
        assert "background" not in rendered.verdict.failed


class TestEbay:
    def test_the_long_side_is_at_least_500(self) -> None:
        rendered = _rendered(product_photo((1800, 1200)), "ebay")
        assert max(decode(rendered.data).size) >= 500
        assert rendered.compliant

    def test_below_500_is_refused(self) -> None:
        rendered = _rendered(soft_subject((300, 300), (50, 50, 250, 250)), "ebay")
        assert max(decode(rendered.data).size) < 500
        assert "long_side_min_500" in rendered.verdict.failed

    @pytest.mark.parametrize(("fmt", "allowed"), [("jpeg", True), ("png", True), ("webp", False)])
    def test_formats(self, fmt: str, allowed: bool) -> None:
        rendered = _rendered(product_photo((1800, 1200)), "ebay", format=fmt)
        assert ("format" in rendered.verdict.failed) is not allowed


@pytest.mark.parametrize("preset", PRESETS)
def test_a_fully_transparent_cut_out_is_an_error_not_a_blank_image(preset: str) -> None:
    # nothing to fill or show: no preset ships a white (or empty) canvas as a product image
    outcome = _render(Image.new("RGBA", (1200, 1200), (0, 0, 0, 0)), preset)
    assert isinstance(outcome, RenderFailure), outcome
    assert outcome.error.code == "unknown_foreground"
    assert not outcome.compliant


def test_an_opaque_master_prepared_once_renders_every_preset() -> None:
    master = prepare_master(product_photo((2400, 2000)))
    outcomes = render(master, parse_renditions([{"name": name, "preset": name} for name in PRESETS]))
    assert all(isinstance(outcome, RenderedRendition) and outcome.compliant for outcome in outcomes)
