"""The renderer, pixel by pixel: halos, backgrounds, placement, colour, metadata, orientation, DPI."""

from __future__ import annotations

import dataclasses
import gc
import io
import itertools
import threading

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageDraw

from airflow_provider_bgremoval.exceptions import ResultProcessingError
from airflow_provider_bgremoval.renditions.compliance import Measured, Rule
from airflow_provider_bgremoval.renditions.renderer import (
    SRGB_ICC,
    Master,
    RenderedRendition,
    RenderFailure,
    RenderOutcome,
    largest_long_side,
    layout,
    prepare_master,
    render,
    render_one,
)
from airflow_provider_bgremoval.renditions.spec import Rendition, RenditionSpec, parse_renditions
from tests.unit.renditions.synthetic import (
    SRGB_GREEN,
    SRGB_RED,
    decode,
    png_bytes,
    product_photo,
    rgb_profile,
    soft_subject,
)


@dataclasses.dataclass(frozen=True)
class _Raising(Rule):
    def _check(self, measured: Measured) -> tuple[bool, str]:
        raise KeyError("a field the rule expected")


def _rendered(outcome: RenderOutcome) -> RenderedRendition:
    assert isinstance(outcome, RenderedRendition), outcome
    return outcome


def _one(master: Image.Image | bytes | Master, **fields: object) -> RenderedRendition:
    return _rendered(render(master, [RenditionSpec(name="r", **fields)])[0])  # type: ignore[arg-type]


def _worst(image: Image.Image, deviation: object) -> int:
    """The largest value of ``deviation(pixel)`` over every pixel of ``image``."""
    return max(deviation(pixel) for pixel in image.convert("RGB").get_flattened_data())  # type: ignore[operator]


def _red_on_white(pixel: tuple[int, int, int]) -> int:
    """How far a pixel is from every blend of pure red and white: (255, v, v)."""
    red, green, blue = pixel
    return max(255 - red, abs(green - blue))


def _blue_on_black(pixel: tuple[int, int, int]) -> int:
    """How far a pixel is from every blend of pure blue and black: (0, 0, v)."""
    red, green, _ = pixel
    return max(red, green)


def _naive_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Each channel resized on its own (straight alpha): what makes halos."""
    bands = [band.resize(size, Image.Resampling.LANCZOS) for band in image.split()]
    return Image.merge("RGBA", bands)


class TestHalos:
    def test_half_transparent_edges_make_no_dark_halo_on_white(self) -> None:
        master = soft_subject(colour=(255, 0, 0), hidden=(0, 0, 0))
        out = decode(_one(master, format="png", background="#ffffff", max_size=217).data)
        assert out.size == (217, 145)
        edge = [
            _red_on_white(pixel)
            for pixel in out.convert("RGB").get_flattened_data()
            if pixel != (255, 255, 255)
        ]
        assert len(edge) > 1000  # the subject and its resampled edge are there
        assert max(edge) == 0  # every pixel is exactly a red/white blend: no dark fringe

    def test_half_transparent_edges_make_no_light_halo_on_black(self) -> None:
        master = soft_subject(colour=(0, 0, 255), hidden=(255, 255, 255))
        out = decode(_one(master, format="png", background="#000000", max_size=217).data)
        assert _worst(out, _blue_on_black) == 0

    def test_the_measure_catches_a_straight_alpha_resize(self) -> None:
        # the same resize done naively (channels alone) shows the halo these tests rule out
        master = soft_subject(colour=(255, 0, 0), hidden=(0, 0, 0))
        naive = _naive_resize(master, (217, 145))
        flat = Image.new("RGBA", naive.size, (255, 255, 255, 255))
        flat.alpha_composite(naive)
        assert _worst(flat, _red_on_white) > 20  # 32 levels darker here

    def test_jpeg_edges_stay_close_to_the_blend(self) -> None:
        master = soft_subject(colour=(255, 0, 0), hidden=(0, 0, 0))
        ours = _worst(decode(_one(master, format="jpeg", quality=95, max_size=217).data), _red_on_white)
        naive = _naive_resize(master, (217, 145))
        flat = Image.new("RGBA", naive.size, (255, 255, 255, 255))
        flat.alpha_composite(naive)
        out = io.BytesIO()
        flat.convert("RGB").save(out, format="JPEG", quality=95, subsampling=0)
        # JPEG's own ringing on a saturated red/white edge (15 levels measured) vs the halo's 40
        assert ours <= 16
        assert _worst(decode(out.getvalue()), _red_on_white) >= 2 * ours


class TestJpegBackground:
    def test_white_background_is_exact_away_from_the_subject(self) -> None:
        master = product_photo((1200, 900))
        rendered = _one(master, format="jpeg", quality=95, background="#ffffff", aspect="1:1", fill=0.85)
        out = decode(rendered.data).convert("RGB")
        box = rendered.measured.subject_box
        assert box is not None
        # every pixel more than one JPEG block (8 px) away from the subject's box
        mask = Image.new("L", out.size, 255)
        ImageDraw.Draw(mask).rectangle((box[0] - 8, box[1] - 8, box[2] + 8, box[3] + 8), fill=0)
        difference = ImageChops.difference(out, Image.new("RGB", out.size, (255, 255, 255)))
        background = Image.new("RGB", out.size)
        background.paste(difference, mask=mask)
        assert max(high for _, high in background.getextrema()) == 0  # type: ignore[misc]

    def test_colour_background_deviation_is_measured_and_small(self) -> None:
        rendered = _one(product_photo((800, 600)), format="jpeg", background="#f4f4f4", size=256, margin="6%")
        out = decode(rendered.data).convert("RGB")
        border = ImageChops.difference(
            out.crop((0, 0, 256, 10)), Image.new("RGB", (256, 10), (244, 244, 244))
        )
        assert max(high for _, high in border.getextrema()) <= 1  # type: ignore[misc]
        assert rendered.verdict.compliant


class TestPlacement:
    def test_fill_spans_the_ratio_of_a_square_canvas_centred(self) -> None:
        master = soft_subject((1500, 1000), box=(200, 300, 1200, 800))  # 1000 x 500 subject
        rendered = _one(master, format="png", aspect="1:1", fill=0.8, background="#ffffff")
        width, height = rendered.measured.width, rendered.measured.height
        assert width == height == 1250  # 1000 / 0.8
        left, top, right, bottom = rendered.measured.subject_box or (0, 0, 0, 0)
        assert 0.8 <= (right - left) / width <= 0.8 + 4 / width
        assert abs(left - (width - right)) <= 1
        assert abs(top - (height - bottom)) <= 1

    def test_fill_on_an_exact_canvas_uses_the_constraining_dimension(self) -> None:
        master = soft_subject((800, 800), box=(100, 100, 700, 700))  # a square subject
        rendered = _one(master, format="png", size=[1000, 500], fill=0.9, upscale=True)
        left, top, right, bottom = rendered.measured.subject_box or (0, 0, 0, 0)
        assert 0.9 <= (bottom - top) / 500 <= 0.9 + 4 / 500  # the height constrains
        assert rendered.measured.fill == pytest.approx((bottom - top) / 500)

    def test_contain_cover_none_on_an_exact_canvas(self) -> None:
        master = Image.new("RGBA", (400, 200), (10, 200, 10, 255))
        contain = decode(_one(master, size=100, fit="contain").data)
        assert contain.getchannel("A").getbbox() == (0, 25, 100, 75)
        cover = decode(_one(master, size=100, fit="cover").data)
        assert cover.getchannel("A").getextrema() == (255, 255)  # filled, the sides cropped
        none = decode(_one(master, size=500, fit="none").data)
        assert none.getchannel("A").getbbox() == (50, 150, 450, 350)  # never scaled

    def test_margin_is_a_share_of_the_canvas(self) -> None:
        master = Image.new("RGBA", (300, 300), (10, 10, 200, 255))
        out = decode(_one(master, size=200, margin="10%").data)
        assert out.getchannel("A").getbbox() == (20, 20, 180, 180)
        derived = decode(_one(master, margin="20px 10%").data)
        assert derived.size == (375, 340)  # 300 / 0.8 wide, 300 + 2 x 20 high

    def test_max_size_scales_the_long_side_down(self) -> None:
        rendered = _one(product_photo((1200, 800)), format="webp", max_size=300)
        assert (rendered.measured.width, rendered.measured.height) == (300, 200)
        assert rendered.layout.refused_upscale == 1.0  # nothing was refused

    def test_a_derived_canvas_stays_under_100_megapixels(self) -> None:
        plan = layout((20_000, 10_000), RenditionSpec(name="r", aspect="1:1", fill=0.5, upscale=True))
        assert plan.canvas[0] * plan.canvas[1] <= 100_000_000
        assert plan.canvas[0] == plan.canvas[1]

    def test_a_derived_webp_canvas_stays_within_webp_s_16383_px(self) -> None:
        # a panorama wider than WebP can store: the WebP rendition is scaled into the format, the PNG
        # keeps every pixel (the WebP encoder refused the canvas: the rendition failed on every run)
        master = prepare_master(soft_subject((17_000, 60), (100, 10, 16_900, 50)))
        webp, capped, png = render(
            master,
            parse_renditions(
                [
                    {"name": "web", "format": "webp", "lossless": True},
                    {"name": "capped", "format": "webp", "max_size": 20_000, "background": "#ffffff"},
                    {"name": "design", "format": "png"},
                ]
            ),
        )
        for outcome in (webp, capped):
            rendered = _rendered(outcome)
            assert rendered.measured.width == 16_383 and rendered.measured.height == 58
            assert decode(rendered.data).size == (16_383, 58)
        assert _rendered(png).measured.width == 17_000
        (web,) = parse_renditions([{"name": "web", "format": "webp"}])
        assert largest_long_side((17_000, 60), web.spec) == 16_383

    def test_a_minimum_that_needs_upscaling_is_flagged_not_met(self) -> None:
        master = product_photo((400, 300))
        refused = _one(master, format="png", min_size=1000)
        assert (refused.measured.width, refused.measured.height) == (400, 300)  # never upscaled silently
        assert refused.layout.refused_upscale == pytest.approx(2.5)
        assert not refused.verdict.compliant
        assert refused.verdict.failed == ("min_size",)
        allowed = _one(master, format="png", min_size=1000, upscale=True)
        assert (allowed.measured.width, allowed.measured.height) == (1000, 750)
        assert allowed.verdict.compliant

    def test_exact_canvas_without_upscale_keeps_native_pixels(self) -> None:
        plan = layout((300, 200), RenditionSpec(name="r", size=1000))
        assert plan.size == (300, 200)
        assert plan.refused_upscale == pytest.approx(1000 / 300)


class TestColour:
    def test_an_embedded_profile_is_honoured_and_srgb_embedded(self) -> None:
        master = Image.new("RGBA", (64, 64), (200, 50, 30, 255))
        data = png_bytes(master, icc_profile=rgb_profile())  # red and green swapped vs sRGB
        rendered = _one(data, format="png")
        out = decode(rendered.data)
        red, green, blue, _ = out.getpixel((32, 32))  # type: ignore[misc]
        assert abs(red - 50) <= 6 and abs(green - 200) <= 6 and abs(blue - 30) <= 8
        profile = ImageCms.ImageCmsProfile(io.BytesIO(out.info["icc_profile"]))
        assert "sRGB" in ImageCms.getProfileDescription(profile)
        assert out.info["icc_profile"] == SRGB_ICC
        assert prepare_master(data).source_profile == "Swapped red-green test RGB"

    def test_the_background_is_composited_after_conversion(self) -> None:
        master = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        master.paste((200, 50, 30, 255), (16, 16, 48, 48))
        rendered = _one(png_bytes(master, icc_profile=rgb_profile()), format="png", background="#f4f4f4")
        out = decode(rendered.data)
        assert out.getpixel((0, 0)) == (244, 244, 244)  # the background colour is exact sRGB

    def test_srgb_tagged_masters_keep_their_pixels(self) -> None:
        data = png_bytes(Image.new("RGB", (8, 8), (12, 34, 56)), icc_profile=SRGB_ICC)
        assert decode(_one(data, format="png").data).getpixel((4, 4)) == (12, 34, 56, 255)
        assert prepare_master(data).source_profile == "sRGB built-in"

    def test_a_broken_profile_is_a_typed_error(self) -> None:
        with pytest.raises(ResultProcessingError) as caught:
            render(
                png_bytes(Image.new("RGB", (8, 8)), icc_profile=b"not a profile"), [RenditionSpec(name="a")]
            )
        assert caught.value.code == "master_colour"

    @pytest.mark.parametrize(("mode", "space"), [("L", "RGB"), ("LA", "RGB"), ("RGBA", "GRAY")])
    def test_a_profile_of_another_colour_space_is_ignored(self, mode: str, space: str) -> None:
        # imaging (and browsers) ignore an RGB profile on a grey PNG: the renderer failed the master
        # 'master_colour' ('cannot build transform') and every rendition of it, on every run
        profile = (
            SRGB_ICC if space == "RGB" else ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
        )
        master = Image.new(mode, (8, 8), {"L": 90, "LA": (90, 255), "RGBA": (12, 34, 56, 255)}[mode])
        prepared = prepare_master(png_bytes(master, icc_profile=profile))
        assert prepared.source_profile is None  # read as untagged
        out = decode(_one(prepared, format="png").data).convert("RGBA")
        assert out.getpixel((4, 4)) == ((90, 90, 90, 255) if mode.startswith("L") else (12, 34, 56, 255))

    def test_untagged_masters_are_read_as_srgb(self) -> None:
        rendered = _one(Image.new("RGB", (8, 8), (12, 34, 56)), format="png", embed_srgb=False)
        out = decode(rendered.data)
        assert out.getpixel((4, 4)) == (12, 34, 56, 255)
        assert "icc_profile" not in out.info

    def test_no_banding_in_a_smooth_gradient(self) -> None:
        ramp = (
            Image.linear_gradient("L").rotate(90, expand=True).resize((1024, 64))
        )  # 255 -> 0, left to right
        master = Image.merge("RGBA", (ramp, ramp, ramp, Image.new("L", ramp.size, 255)))
        for fmt, worst_step in (("png", 1), ("jpeg", 2)):
            out = decode(_one(master, format=fmt, max_size=512).data).convert("L")
            row = [out.getpixel((x, 16)) for x in range(out.width)]
            steps = [abs(int(b) - int(a)) for a, b in itertools.pairwise(row)]  # type: ignore[call-overload]
            assert max(steps) <= worst_step, fmt
            assert len(set(row)) >= 240, fmt  # the levels are kept, not merged into bands

    def test_no_banding_after_a_colour_conversion(self) -> None:
        # a gamma-1.8 master converted to sRGB's curve in 8 bits: a level is skipped at most
        ramp = Image.linear_gradient("L").rotate(90, expand=True).resize((1024, 64))
        master = Image.merge("RGBA", (ramp, ramp, ramp, Image.new("L", ramp.size, 255)))
        profile = rgb_profile("gamma 1.8, sRGB primaries", red=SRGB_RED, green=SRGB_GREEN, gamma=1.8)
        out = decode(_one(png_bytes(master, icc_profile=profile), format="png", max_size=512).data)
        row = [out.convert("L").getpixel((x, 16)) for x in range(out.width)]
        assert max(abs(int(b) - int(a)) for a, b in itertools.pairwise(row)) <= 2  # type: ignore[call-overload]
        assert len(set(row)) >= 220


class TestMetadata:
    def _exif_master(self, orientation: int = 1) -> bytes:
        master = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
        master.paste((255, 0, 0, 255), (0, 0, 10, 10))  # a marker in the top-left corner
        exif = Image.Exif()
        exif[ExifTags.Base.Make] = "TestCam"
        exif[ExifTags.Base.Orientation] = orientation
        exif[ExifTags.Base.GPSInfo] = {
            ExifTags.GPS.GPSLatitudeRef: "N",
            ExifTags.GPS.GPSLatitude: (48.0, 51.0, 0.0),
        }
        return png_bytes(master, exif=exif)

    @pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
    def test_exif_and_gps_are_stripped_by_default(self, fmt: str) -> None:
        data = self._exif_master()
        assert decode(data).getexif()[ExifTags.Base.Make] == "TestCam"
        rendered = _one(data, format=fmt)
        out = decode(rendered.data)
        assert len(out.getexif()) == 0
        assert "exif" not in out.info
        assert rendered.measured.exif_tags == 0 and not rendered.measured.gps

    def test_keep_writes_the_exif_without_the_orientation(self) -> None:
        rendered = _one(self._exif_master(orientation=6), format="jpeg", metadata="keep")
        exif = decode(rendered.data).getexif()
        assert exif[ExifTags.Base.Make] == "TestCam"
        assert ExifTags.Base.Orientation not in exif

    def test_orientation_is_applied(self) -> None:
        rendered = _one(self._exif_master(orientation=6), format="png")  # 6: rotate 90 degrees clockwise
        out = decode(rendered.data)
        assert out.size == (40, 60)
        assert out.getpixel((35, 5))[3] == 255  # the top-left marker is now top-right  # type: ignore[index]
        assert out.getpixel((5, 5))[3] == 0  # type: ignore[index]

    @pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
    def test_a_master_with_a_broken_exif_block_renders_as_stored(self, fmt: str) -> None:
        # the pipeline reads such an image as upright (imaging); preparing it raised, and every
        # rendition of the image failed master_unreadable, on every run
        master = Image.new("RGB", (60, 40), (20, 160, 60))
        out = io.BytesIO()
        master.save(
            out, format=fmt, exif=b"garbage-exif-bytes", **({"lossless": True} if fmt == "WEBP" else {})
        )
        prepared = prepare_master(out.getvalue())
        assert prepared.size == (60, 40) and prepared.exif is None
        kept = _one(prepared, format="png", metadata="keep")
        assert decode(kept.data).size == (60, 40) and len(decode(kept.data).getexif()) == 0
        assert decode(kept.data).convert("RGB").getpixel((30, 20)) == (20, 160, 60)

    @pytest.mark.parametrize("fmt", ["jpeg", "png"])
    def test_dpi_is_written(self, fmt: str) -> None:
        out = decode(_one(product_photo((200, 100)), format=fmt, dpi=300).data)
        assert tuple(round(value) for value in out.info["dpi"]) == (300, 300)


class TestRender:
    def test_every_rendition_from_one_decode(self, monkeypatch: pytest.MonkeyPatch) -> None:
        renditions = parse_renditions(
            [
                {"name": "amazon", "preset": "amazon_main"},
                {"name": "web", "format": "webp", "max_size": 300, "background": "transparent"},
                {
                    "name": "thumb",
                    "format": "jpeg",
                    "size": [128, 128],
                    "background": "#f4f4f4",
                    "margin": "6%",
                },
                {"name": "design", "format": "png"},
            ]
        )
        opened: list[int] = []
        real_open = Image.open

        def counting_open(*args: object, **kwargs: object) -> Image.Image:
            opened.append(1)
            return real_open(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Image, "open", counting_open)
        outcomes = render(png_bytes(product_photo((1200, 1200))), renditions)
        assert [outcome.name for outcome in outcomes] == ["amazon", "web", "thumb", "design"]
        # one decode of the master, then one read-back of each written rendition by its checks
        assert len(opened) == 1 + len(renditions)

    def test_threads_render_the_same_bytes(self) -> None:
        master = prepare_master(product_photo((900, 700)))
        specs = [
            RenditionSpec(name=f"r{size}", format="jpeg", max_size=size) for size in (100, 200, 300, 400)
        ]
        expected = [_rendered(render_one(master, spec)).data for spec in specs]
        results: dict[int, bytes] = {}

        def work(index: int) -> None:
            results[index] = _rendered(render_one(master, specs[index])).data

        threads = [threading.Thread(target=work, args=(index,)) for index in range(len(specs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [results[index] for index in range(len(specs))] == expected

    def test_threads_prepare_and_render_the_same_bytes(self) -> None:
        data = [
            png_bytes(product_photo((300 + 50 * index, 200)), icc_profile=rgb_profile()) for index in range(4)
        ]
        specs = [RenditionSpec(name="a", format="jpeg", aspect="1:1", fill=0.8), RenditionSpec(name="b")]
        expected = [[_rendered(outcome).data for outcome in render(item, specs)] for item in data]
        results: dict[int, list[bytes]] = {}

        def work(index: int) -> None:
            results[index] = [_rendered(outcome).data for outcome in render(data[index], specs)]

        threads = [threading.Thread(target=work, args=(index,)) for index in range(len(data))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [results[index] for index in range(len(data))] == expected

    def test_a_master_without_subject_fails_every_rendition(self) -> None:
        # a blank canvas is no product image: the renditions that do not crop rendered one (white for
        # a JPEG) and reported it compliant
        empty = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
        outcomes = render(
            empty,
            [
                RenditionSpec(name="a", fill=0.8),
                RenditionSpec(name="b", format="png"),
                RenditionSpec(name="c", format="jpeg", size=100),
            ],
        )
        for outcome in outcomes:
            assert isinstance(outcome, RenderFailure), outcome
            assert outcome.error.code == "unknown_foreground"
            assert outcome.facts()["status"] == "failed"

    def test_a_check_that_raises_fails_its_rendition_only(self) -> None:
        # a preset's rule may be the user's own code: render() raised and returned no rendition at all
        broken = Rendition(RenditionSpec(name="a", format="png"), rules=(_Raising(),))
        failed, whole = render(soft_subject(), [broken, RenditionSpec(name="b", format="png")])
        assert isinstance(failed, RenderFailure) and failed.error.code == "rendition_failed"
        assert "rendition 'a' failed (KeyError" in failed.error.message
        assert isinstance(whole, RenderedRendition) and whole.compliant

    def test_a_large_master_is_not_copied_more_than_it_must_be(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # the most full-size images alive at once while the master is prepared (decoded, turned, RGBA,
        # premultiplied: 800 MB at 50 MP) and while a full-size rendition is made (the master, its crop,
        # the straight copy, the canvas): 4 of each; now 2 (what each step must hold)
        size = (640, 480)
        most = {"prepare": 0, "render": 0}
        stage = ["prepare"]

        def of_size() -> set[int]:  # type(), not isinstance(): that reads __class__, which wakes lazy proxies
            return {id(o) for o in gc.get_objects() if issubclass(type(o), Image.Image) and o.size == size}

        gc.collect()
        earlier = of_size()  # images other tests left alive (the suite's order varies): not this render's

        def count() -> None:
            gc.collect()
            most[stage[0]] = max(most[stage[0]], len(of_size() - earlier))

        convert, save, new = Image.Image.convert, Image.Image.save, Image.new

        def counting_convert(image: Image.Image, *args: object, **kw: object) -> Image.Image:
            result = convert(image, *args, **kw)  # type: ignore[arg-type]
            count()
            return result

        def counting_save(image: Image.Image, *args: object, **kw: object) -> None:
            count()
            save(image, *args, **kw)  # type: ignore[arg-type]

        def counting_new(*args: object, **kw: object) -> Image.Image:
            result = new(*args, **kw)  # type: ignore[arg-type]
            count()
            return result

        data = png_bytes(soft_subject(size, (100, 100, 500, 400)))
        monkeypatch.setattr(Image.Image, "convert", counting_convert)
        monkeypatch.setattr(Image.Image, "save", counting_save)
        monkeypatch.setattr(Image, "new", counting_new)
        master = prepare_master(data)
        stage[0] = "render"
        _rendered(render_one(master, RenditionSpec(name="design", format="png")))
        assert most == {"prepare": 2, "render": 2}

    def test_unreadable_master_bytes(self) -> None:
        with pytest.raises(ResultProcessingError) as caught:
            render(b"not an image", [RenditionSpec(name="a")])
        assert caught.value.code == "master_unreadable"

    def test_an_opaque_master_renders_whole(self) -> None:
        # a generate-background output has no alpha: its subject is the whole picture
        rendered = _one(Image.new("RGB", (300, 200), (30, 60, 90)), format="jpeg", aspect="1:1", fill=0.5)
        assert rendered.measured.width == 600
        assert rendered.verdict.compliant

    @pytest.mark.parametrize("mode", ["P", "LA", "L", "I;16", "CMYK", "RGB"])
    def test_masters_in_any_mode(self, mode: str) -> None:
        master = soft_subject((80, 60), box=(20, 15, 60, 45), colour=(200, 200, 200)).convert(
            "RGBA" if mode in ("P", "LA") else "RGB"
        )
        if mode == "I;16":
            master = master.convert("L").convert("I;16")
        elif mode != "RGB":
            master = master.convert(mode)
        rendered = _one(png_bytes(master) if mode != "CMYK" else master, format="png", crop=True)
        assert rendered.verdict.compliant
        has_alpha = mode in ("P", "LA")
        out = decode(rendered.data)
        assert (out.width, out.height) == ((40, 30) if has_alpha else (80, 60))  # cropped to the alpha

    def test_transparent_webp_and_png_keep_alpha(self) -> None:
        for fields in ({"format": "webp", "lossless": True}, {"format": "png"}):
            rendered = _one(soft_subject(), **fields)
            out = decode(rendered.data)
            assert out.mode == "RGBA"
            assert out.getpixel((0, 0))[3] == 0  # type: ignore[index]
            assert out.getpixel((300, 200)) == (255, 0, 0, 255)
            assert out.getpixel((151, 150))[3] == 128  # type: ignore[index]

    def test_facts_for_the_manifest(self) -> None:
        rendered = _one(product_photo((400, 300)), format="jpeg", size=200)
        facts = rendered.facts()
        assert facts["status"] == "rendered"
        assert (facts["format"], facts["width"], facts["height"]) == ("jpeg", 200, 200)
        assert facts["bytes"] == len(rendered.data)
        assert facts["compliant"] is True
        assert "format" in facts["passed"] and facts["failed"] == []
        assert rendered.content_type == "image/jpeg" and rendered.extension == ".jpg"


# -- The largest rendition a source allows (planning settles renditions no master can make compliant) -----

BOUND_SPECS = [
    {"name": "amazon", "preset": "amazon_main"},  # fill 0.85 on a 1:1 canvas: larger than the subject
    {"name": "margin", "format": "png", "margin": "10px 20%", "min_size": 2000},
    {"name": "wide", "format": "png", "aspect": "4:3", "min_size": 2000},
    {"name": "cover", "format": "png", "aspect": "4:3", "fit": "cover", "min_size": 2000},
    {"name": "crop", "format": "png", "crop": True, "max_size": 150, "min_size": 100},
    {"name": "plain", "format": "webp", "min_size": 2000},
]


@pytest.mark.parametrize("spec", BOUND_SPECS, ids=[spec["name"] for spec in BOUND_SPECS])
def test_no_master_within_the_source_renders_past_the_largest_long_side(spec: dict[str, object]) -> None:
    (rendition,) = parse_renditions([spec])
    source = (300, 200)
    bound = largest_long_side(source, rendition.spec)
    assert bound is not None
    masters = [
        soft_subject((300, 200), (0, 0, 300, 200)),  # the subject fills the source
        soft_subject((200, 300), (0, 0, 200, 300)),  # turned upright (EXIF orientation)
        soft_subject((300, 200), (100, 20, 140, 180)),  # a tall narrow subject
        soft_subject((120, 200), (10, 10, 110, 190)),  # a smaller master (the vendor shrank it)
    ]
    sides = [max(layout_of(render_one(prepare_master(master), rendition))) for master in masters]
    assert max(sides) <= bound
    assert max(sides) >= bound - 1  # and the bound is tight: a master fills it (within rounding)


def layout_of(outcome: object) -> tuple[int, int]:
    assert isinstance(outcome, RenderedRendition), outcome
    return outcome.layout.canvas


def test_the_largest_long_side_of_amazon_main_from_a_small_source() -> None:
    (amazon,) = parse_renditions([{"name": "amazon", "preset": "amazon_main"}])
    # fill 0.85 on a square: a 900 px subject can make a 1059 px canvas, over the 1000 px minimum
    assert largest_long_side((900, 700), amazon.spec) == 1059
    assert largest_long_side((800, 600), amazon.spec) == 942
    assert largest_long_side((600, 800), amazon.spec) == 942


def test_upscaling_or_an_exact_canvas_is_not_bounded_by_the_source() -> None:
    upscale, exact = parse_renditions(
        [
            {"name": "up", "preset": "amazon_main", "upscale": True},
            {"name": "exact", "format": "jpeg", "size": [2048, 2048]},
        ]
    )
    assert largest_long_side((100, 100), upscale.spec) is None
    assert largest_long_side((100, 100), exact.spec) is None
