"""Compliance checks, measured on encoded bytes: each rule, and a wrong preset caught."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from airflow_provider_bgremoval.renditions.compliance import (
    Aspect,
    BorderColor,
    BorderLight,
    CheckResult,
    Dpi,
    ExactSize,
    Fill,
    Formats,
    Limits,
    Measured,
    NoMetadata,
    Opaque,
    Sides,
    Srgb,
    Verdict,
    fill_ratio,
    judge,
    measure,
    spec_rules,
    unreachable,
)
from airflow_provider_bgremoval.renditions.renderer import SRGB_ICC, RenderedRendition, render
from airflow_provider_bgremoval.renditions.spec import RenditionSpec, parse_renditions
from tests.unit.renditions.synthetic import png_bytes, product_photo, rgb_profile

WHITE = (255, 255, 255)


def _canvas(
    size: tuple[int, int] = (100, 100), box: tuple[int, int, int, int] = (10, 30, 90, 70)
) -> Image.Image:
    image = Image.new("RGB", size, WHITE)
    image.paste((20, 20, 20), box)
    return image


def _measured(
    image: Image.Image, fmt: str = "PNG", background: tuple[int, int, int] | None = WHITE, **params: object
) -> Measured:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return measure(out.getvalue(), background)


def _passes(rule: object, measured: Measured) -> bool:
    return rule.evaluate(measured).passed  # type: ignore[attr-defined, no-any-return]


class TestMeasure:
    def test_fill_and_box_on_an_opaque_background(self) -> None:
        measured = _measured(_canvas())
        assert measured.subject_box == (10, 30, 90, 70)
        assert measured.fill == pytest.approx(0.8)
        assert (measured.format, measured.width, measured.min_alpha) == ("png", 100, 255)

    def test_fill_on_a_transparent_background(self) -> None:
        image = Image.new("RGBA", (200, 100), (255, 255, 255, 0))
        image.paste((1, 2, 3, 10), (50, 10, 150, 90))
        measured = _measured(image, background=None)
        assert measured.subject_box == (50, 10, 150, 90)
        assert measured.fill == pytest.approx(0.8)  # the height constrains: 80 / 100
        assert measured.min_alpha == 0

    def test_a_16_bit_grey_border_is_scaled_not_clipped_to_white(self) -> None:
        measured = _measured(Image.new("I;16", (20, 20), 30_000))  # grey 117 of 255, not white
        assert measured.border[:3] == ((117, 117),) * 3
        assert not _passes(BorderColor(rgb=WHITE), measured)

    def test_a_trns_transparent_border_is_transparent(self) -> None:
        measured = _measured(_canvas(), transparency=WHITE)  # an RGB PNG whose white is see-through
        assert measured.min_alpha == 0
        assert not _passes(Opaque(), measured)
        assert not _passes(BorderColor(rgb=WHITE), measured)

    def test_sides_are_measured_upright(self) -> None:
        exif = Image.Exif()
        exif[0x0112] = 6  # shown rotated by 90 degrees
        measured = _measured(_canvas((200, 100), (10, 10, 20, 20)), "JPEG", exif=exif)
        assert (measured.width, measured.height) == (100, 200)
        assert not _passes(Aspect(ratio=2.0), measured)

    def test_fill_ratio(self) -> None:
        assert fill_ratio(None, (10, 10)) == 0
        assert fill_ratio((0, 0, 85, 40), (100, 100)) == pytest.approx(0.85)


class TestRules:
    def test_border_colour_is_exact(self) -> None:
        image = _canvas()
        assert _passes(BorderColor(rgb=WHITE), _measured(image))
        image.putpixel((99, 50), (254, 255, 255))  # one near-white pixel on the right edge
        measured = _measured(image)
        result = BorderColor(rgb=WHITE).evaluate(measured)
        assert not result.passed
        assert "worst channel deviation 1" in result.message
        assert _passes(BorderColor(rgb=WHITE, tolerance=1), measured)

    def test_the_spec_s_background_reads_the_border_outside_the_subject_as_placed(self) -> None:
        # a subject on the left edge (x 0-40): the background check reads the rest of the ring, a
        # marketplace's border rule the whole of it
        image = Image.new("RGB", (100, 100), WHITE)
        image.paste((20, 20, 20), (0, 30, 40, 70))
        data = png_bytes(image)
        open_only = BorderColor(rgb=WHITE, outside_subject=True)
        placed = measure(data, WHITE, covered=(-4, 26, 44, 74))
        assert _passes(open_only, placed)
        assert not _passes(BorderColor(rgb=WHITE), placed)
        assert not _passes(open_only, measure(data, WHITE))  # no placement given: the whole ring
        image.putpixel((0, 90), (254, 255, 255))  # off-white where the canvas shows background
        assert not _passes(open_only, measure(png_bytes(image), WHITE, covered=(-4, 26, 44, 74)))
        everywhere = measure(data, WHITE, covered=(-5, -5, 105, 105))
        assert everywhere.open_border == ()
        result = open_only.evaluate(everywhere)
        assert result.passed and "covers the whole border" in result.message

    def test_a_transparent_border_is_not_white(self) -> None:
        image = Image.new("RGBA", (20, 20), (255, 255, 255, 0))
        measured = _measured(image, background=None)
        assert not _passes(BorderColor(rgb=WHITE), measured)
        assert not _passes(Opaque(), measured)

    def test_border_light(self) -> None:
        image = _canvas()
        assert _passes(BorderLight(minimum=240), _measured(image))
        image.putpixel((0, 0), (230, 250, 250))
        assert not _passes(BorderLight(minimum=240), _measured(image))

    def test_opaque(self) -> None:
        image = Image.new("RGBA", (10, 10), (255, 255, 255, 255))
        assert _passes(Opaque(), _measured(image))
        image.putpixel((5, 5), (0, 0, 0, 254))
        assert not _passes(Opaque(), _measured(image))

    def test_fill(self) -> None:
        measured = _measured(_canvas())  # 0.8
        assert _passes(Fill(minimum=0.8), measured)
        assert not _passes(Fill(minimum=0.85), measured)
        assert not _passes(Fill(minimum=0.5, maximum=0.75), measured)

    def test_a_failing_fill_never_reads_as_its_bound(self) -> None:
        short = _measured(_canvas((2000, 2000), (0, 0, 1699, 10)))  # 84.95 %
        assert Fill(minimum=0.85).evaluate(short).message == (
            "subject fills 84.95% of the canvas (at least 85% wanted)"
        )
        over = _measured(_canvas((2000, 2000), (0, 0, 1801, 10)))  # 90.05 %
        result = Fill(minimum=0.75, maximum=0.9).evaluate(over)
        assert (result.passed, result.message) == (
            False,
            "subject fills 90.05% of the canvas (75%-90% wanted)",
        )
        exact = _measured(_canvas((100, 100), (0, 0, 29, 10)))
        assert (
            Fill(minimum=0.29).evaluate(exact).message
            == "subject fills 29% of the canvas (at least 29% wanted)"
        )

    def test_sides_size_and_aspect(self) -> None:
        measured = _measured(_canvas((1000, 800), (0, 0, 10, 10)))
        assert _passes(Sides(min_long=1000), measured)
        assert not _passes(Sides(min_long=1001), measured)
        assert not _passes(Sides(max_long=999), measured)
        assert not _passes(Sides(min_short=801), measured)
        assert _passes(ExactSize(size=(1000, 800)), measured)
        assert not _passes(ExactSize(size=(800, 1000)), measured)
        assert _passes(Aspect(ratio=1.25), measured)
        assert not _passes(Aspect(ratio=1.0), measured)
        assert not _passes(Aspect(ratio=1.0), _measured(_canvas((1000, 1001), (0, 0, 10, 10))))
        assert Sides(min_long=1000).check_name == "long_side_min_1000"

    def test_limits_and_formats(self) -> None:
        measured = _measured(_canvas(), "JPEG")
        assert _passes(Limits(max_bytes=measured.nbytes, max_pixels=10_000), measured)
        assert not _passes(Limits(max_bytes=measured.nbytes - 1), measured)
        assert not _passes(Limits(max_pixels=9_999), measured)
        assert _passes(Formats(allowed=("jpeg", "png")), measured)
        assert not _passes(Formats(allowed=("png",)), measured)

    def test_srgb(self) -> None:
        untagged = _measured(_canvas())
        assert _passes(Srgb(), untagged)
        assert not _passes(Srgb(tagged=True), untagged)
        assert _passes(Srgb(tagged=True), _measured(_canvas(), icc_profile=SRGB_ICC))
        assert not _passes(Srgb(), _measured(_canvas(), icc_profile=rgb_profile()))
        cmyk = _measured(_canvas().convert("CMYK"), "JPEG")
        assert not _passes(Srgb(), cmyk)
        assert _passes(Srgb(), _measured(_canvas().convert("P")))  # a palette of (untagged) sRGB colours
        assert Srgb(tagged=True).evaluate(untagged).message == (
            "mode RGB, ICC profile none (RGB, grey or palette pixels and an sRGB ICC profile embedded wanted)"
        )
        assert (
            Srgb()
            .evaluate(cmyk)
            .message.endswith("(RGB, grey or palette pixels and an sRGB ICC profile or none wanted)")
        )

    def test_metadata_and_dpi(self) -> None:
        exif = Image.Exif()
        exif[0x010F] = "TestCam"
        assert not _passes(NoMetadata(), _measured(_canvas(), exif=exif))
        assert _passes(NoMetadata(), _measured(_canvas()))
        assert _passes(Dpi(dpi=300), _measured(_canvas(), dpi=(300, 300)))
        assert not _passes(Dpi(dpi=300), _measured(_canvas()))

    def test_spec_rules(self) -> None:
        spec = RenditionSpec(name="r", format="jpeg", aspect="1:1", fill=0.8, min_size=100, dpi=72)
        names = [rule.check_name for rule in spec_rules(spec)]
        assert names == [
            "format",
            "square",
            "min_size",
            "fill",
            "background",
            "srgb",
            "metadata_stripped",
            "dpi",
        ]


class TestVerdicts:
    def test_advice_does_not_fail(self) -> None:
        verdict = Verdict(
            (
                CheckResult("a", True, ""),
                CheckResult("b", False, "", required=False),
            )
        )
        assert verdict.compliant
        assert (verdict.failed, verdict.advice) == ((), ("b",))
        assert verdict.as_dict()["passed"] == ["a"]

    def _render(
        self, renditions: list[dict[str, object]], presets: dict[str, object] | None = None
    ) -> list[RenderedRendition]:
        outcomes = render(product_photo((2400, 2000)), parse_renditions(renditions, presets))  # type: ignore[arg-type]
        assert all(isinstance(outcome, RenderedRendition) for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def test_a_deliberately_wrong_preset_is_caught(self) -> None:
        presets = {
            "near_white": {"preset": "amazon_main", "background": "#f8fafc"},  # rejected by Amazon's checks
            "webp_main": {"preset": "amazon_main", "format": "webp"},
            "loose": {"preset": "amazon_main", "fill": 0.6},
        }
        good, near_white, webp, loose = self._render(
            [
                {"name": "good", "preset": "amazon_main"},
                {"name": "near-white", "preset": "near_white"},
                {"name": "webp", "preset": "webp_main"},
                {"name": "loose", "preset": "loose"},
            ],
            presets,  # type: ignore[arg-type]
        )
        assert good.compliant, good.verdict.as_dict()
        assert not near_white.compliant
        assert near_white.verdict.failed == ("border_white",)
        assert not webp.compliant
        # the spec's own format check passes, Amazon's fails; lossy WebP's white is not exact either
        assert set(webp.verdict.failed) == {"format", "border_white"}
        assert not loose.compliant
        assert loose.verdict.failed == ("fill",)
        origins = {check.origin for check in near_white.verdict.checks if not check.passed}
        assert origins == {"preset:near_white"}

    def test_the_verdict_judges_the_bytes_written(self) -> None:
        (good,) = self._render([{"name": "good", "preset": "amazon_main"}])
        image = Image.open(io.BytesIO(good.data)).convert("RGB")
        image.putpixel((0, 0), (254, 254, 254))
        tampered = measure(png_bytes(image), (255, 255, 255))
        verdict = judge(good.rendition, tampered)
        assert not verdict.compliant
        assert "border_white" in verdict.failed

    def test_recommendations_are_reported(self) -> None:
        (small,) = self._render([{"name": "amazon", "preset": "amazon_main", "max_size": 1200}])
        assert small.compliant
        assert small.verdict.advice == ("long_side_recommended_1600",)


@pytest.mark.parametrize(
    ("fields", "tolerance"),
    [
        ({"format": "png"}, 0),
        ({"format": "webp", "lossless": True}, 0),
        ({"format": "jpeg"}, 2),
        ({"format": "webp"}, 6),
    ],
)
def test_the_background_check_allows_what_the_format_loses(fields: dict[str, object], tolerance: int) -> None:
    spec = RenditionSpec(name="r", background="#123456", **fields)  # type: ignore[arg-type]
    (rule,) = (rule for rule in spec_rules(spec) if rule.check_name == "background")
    assert isinstance(rule, BorderColor)
    assert (rule.rgb, rule.tolerance) == ((0x12, 0x34, 0x56), tolerance)


@pytest.mark.parametrize(("fmt", "background"), [("jpeg", "#123456"), ("webp", "#f4f4f4")])
def test_the_fill_of_a_lossy_rendition_is_not_its_background_noise(fmt: str, background: str) -> None:
    spec = RenditionSpec(name="r", format=fmt, background=background, quality=75, fill=0.6, aspect=1.0)  # type: ignore[arg-type]
    (outcome,) = render(product_photo((1200, 1000)), [spec])
    assert isinstance(outcome, RenderedRendition)
    assert 0.6 <= outcome.measured.fill < 0.62, outcome.measured.subject_box  # not 1.0: the whole canvas
    assert _passes(Fill(minimum=0.5, maximum=0.9), outcome.measured)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("background", ["#ffffff", "#f4f4f4", "#ff0000", "#123456", "#00ff00"])
def test_lossy_backgrounds_pass_their_own_check(fmt: str, background: str) -> None:
    (outcome,) = render(
        product_photo((800, 600)), [RenditionSpec(name="r", format=fmt, background=background, quality=75)]
    )
    assert isinstance(outcome, RenderedRendition)
    (check,) = (check for check in outcome.verdict.checks if check.name == "background")
    assert check.passed, check.message


def test_unreachable_names_the_long_side_minimums_a_bounded_rendition_must_fail() -> None:
    (amazon,) = parse_renditions([{"name": "amazon", "preset": "amazon_main"}])
    names = [check.name for check in unreachable(amazon, 942)]
    assert names == ["min_size", "long_side_min_1000"]  # the 1,600 px advice is not required
    below = unreachable(amazon, 400)
    assert [check.name for check in below] == ["min_size", "long_side_min_1000", "long_side_hard_min_500"]
    assert [check.origin for check in below] == ["spec", "preset:amazon_main", "preset:amazon_main"]
    assert all(not check.passed and check.required for check in below)
    assert below[0].message == "at most 400 px on the long side (1000 wanted)"
    assert unreachable(amazon, 1000) == ()
    (plain,) = parse_renditions([{"name": "web", "format": "webp", "max_size": 1024}])
    assert unreachable(plain, 10) == ()  # no minimum: it may comply at any size


def test_unreachable_agrees_with_the_verdict_of_a_rendition_of_that_size() -> None:
    (amazon,) = parse_renditions([{"name": "amazon", "preset": "amazon_main"}])
    (rendered,) = render(png_bytes(product_photo((300, 200))), [amazon])
    assert isinstance(rendered, RenderedRendition)
    expected = {check.name for check in unreachable(amazon, rendered.measured.long_side)}
    assert expected and expected <= set(rendered.verdict.failed)
