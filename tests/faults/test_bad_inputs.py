"""Bad inputs and bad parameters: refused locally with a clear per-image message and 0 credits.

One bucket of hostile and unusual inputs goes through each vendor's real pipeline; every input the
provider can judge locally is rejected without a vendor call, and the unusual-but-valid ones
(CMYK, 16-bit, palette, grayscale, animations, EXIF rotation, AVIF, odd names) are converted or
kept and processed once.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from tests.faults.conftest import Cell
from tests.faults.matrix import VENDORS, assert_decodes, check_cell, encode, run_batch, studio_shot

pytestmark = pytest.mark.integration


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def decompression_bomb() -> bytes:
    """A 70-byte PNG declaring 100000 x 100000 pixels (10 gigapixels)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def heic_like() -> bytes:
    """The start of an HEIC file (an ISO-BMFF ``ftyp`` box, brand ``heic``) — Pillow 13 has no reader."""
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", 8 + len(ftyp)) + ftyp + b"\x00\x00\x00\x08free" + bytes(2000)


def upright_subject() -> Image.Image:
    """An upright 80 x 120 portrait: backdrop, a red subject in the TOP half only."""
    image = Image.new("RGB", (80, 120), (236, 236, 236))
    ImageDraw.Draw(image).ellipse((15, 10, 65, 55), fill=(200, 30, 30))
    return image


def exif_rotated_jpeg() -> bytes:
    """The upright portrait stored rotated (landscape pixels) with EXIF orientation 6 (rotate 90° CW)."""
    stored = upright_subject().transpose(Image.Transpose.ROTATE_90)  # 120 x 80, as a camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def animated(fmt: str) -> bytes:
    frames = [studio_shot((96, 96), 1), Image.new("RGB", (96, 96), (0, 0, 255))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def hostile_inputs() -> dict[str, bytes]:
    """Relative name -> bytes of every bad or unusual input of the matrix."""
    rng = random.Random(1)
    good = studio_shot((100, 90), 2)
    jpeg = encode(studio_shot((128, 128), 3), "JPEG", quality=95)
    png = encode(Image.effect_noise((128, 128), 60).convert("RGB"), "PNG")
    palette = Image.new("P", (96, 96), 0)
    palette.putpalette([236, 236, 236, 200, 30, 30] + [0] * 762)
    ImageDraw.Draw(palette).ellipse((20, 20, 76, 76), fill=1)
    palette.info["transparency"] = 0
    sixteen = Image.new("I;16", (96, 96), 60000)
    ImageDraw.Draw(sixteen).ellipse((20, 20, 76, 76), fill=9000)
    huge = Image.new("1", (8000, 4100), 1)  # 32.8 MP, over every vendor's limit; a tiny PNG
    return {
        "ok.png": encode(good, "PNG"),
        "empty.jpg": b"",
        "truncated-jpeg.jpg": jpeg[: len(jpeg) // 2],
        "truncated-png.png": png[: len(png) // 2],
        "random.png": rng.randbytes(4096),
        "page.jpg": b"<!doctype html><html><head><title>Not Found</title></head><body>404</body></html>",
        "vector.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><circle r="9"/></svg>',
        "phone-heic.heic": heic_like(),
        "phone-avif.avif": encode(good, "AVIF"),
        "huge-pixels.png": encode(huge, "PNG"),
        "tiny-32.png": encode(studio_shot((32, 32), 4), "PNG"),
        "bomb.png": decompression_bomb(),
        "cmyk.jpg": encode(good.convert("CMYK"), "JPEG", quality=95),
        "sixteen-bit.png": encode(sixteen, "PNG"),
        "palette-transparent.png": encode(palette, "PNG", transparency=0),
        "gray.jpg": encode(good.convert("L"), "JPEG", quality=95),
        "animated-gif.gif": animated("GIF"),
        "animated-webp.webp": animated("WEBP"),
        "exif-rotated.jpg": exif_rotated_jpeg(),
        "with space/a b.png": encode(good, "PNG"),
        "ünïcødé/商品.png": encode(good, "PNG"),
        "hash#1.png": encode(good, "PNG"),
        "question?x=1.png": encode(good, "PNG"),
        "a/b/c/d/e/f/g/deep.png": encode(good, "PNG"),
    }


#: What each input ends as, per vendor: ``done`` or the local reject code.
COMMON_EXPECTED = {
    "ok.png": "done",
    "empty.jpg": "empty_file",
    "truncated-jpeg.jpg": "malformed_image",
    "truncated-png.png": "malformed_image",
    "random.png": "unsupported_image",
    "page.jpg": "unsupported_image",
    "vector.svg": "unsupported_image",
    "phone-heic.heic": "unsupported_image",
    "phone-avif.avif": "done",  # Pillow 13 reads AVIF: converted to PNG before sending
    "bomb.png": "too_many_pixels",
    "cmyk.jpg": "done",
    "sixteen-bit.png": "done",
    "palette-transparent.png": "done",
    "gray.jpg": "done",
    "animated-gif.gif": "done",  # first frame
    "animated-webp.webp": "done",  # first frame
    "exif-rotated.jpg": "done",
    "with space/a b.png": "done",
    "ünïcødé/商品.png": "done",
    "hash#1.png": "done",
    "question?x=1.png": "done",
    "a/b/c/d/e/f/g/deep.png": "done",
}
EXPECTED = {
    "pixelcut": {
        **COMMON_EXPECTED,
        "huge-pixels.png": "resolution_too_high",
        "tiny-32.png": "resolution_too_low",
    },
    "pixian": {**COMMON_EXPECTED, "huge-pixels.png": "too_many_pixels", "tiny-32.png": "done"},
    "poof": {**COMMON_EXPECTED, "huge-pixels.png": "resolution_too_high", "tiny-32.png": "done"},
}
#: Messages must say what is wrong in words a user understands.
MESSAGE_WORDS = {
    "empty_file": "empty",
    "malformed_image": "corrupt or truncated",
    "unsupported_image": "not a readable image",
    "too_many_pixels": "pixels",
    "resolution_too_high": "limit",
    "resolution_too_low": "minimum",
    "file_size_too_large": "bytes",
}


@pytest.fixture(scope="module")
def hostile_source(fake_gcs) -> tuple[str, dict[str, bytes]]:
    from airflow_provider_bgremoval.storage.gcs import GcsStorage
    from tests.faults.matrix import seed
    from tests.support.gcs import fast_retry, unique_bucket_name

    storage = GcsStorage(gcp_conn_id=None, retry=fast_retry(10.0), timeout=10.0)
    bucket = unique_bucket_name("hostile")
    fake_gcs.create_bucket(bucket)
    objects = {f"bad/{name}": data for name, data in hostile_inputs().items()}
    seed(storage, bucket, objects)
    return bucket, objects


def test_this_pillow_reads_avif_but_not_heic() -> None:
    """The documented outcome of HEIC/AVIF depends on Pillow's plugins: pin what this build does."""
    from PIL import features

    assert features.check("avif")
    with pytest.raises(Exception):  # noqa: B017 - any "cannot identify" error
        Image.open(io.BytesIO(heic_like()))


@pytest.mark.parametrize("vendor", VENDORS)
async def test_hostile_and_unusual_inputs(cell: Cell, hostile_source, vendor: str) -> None:
    src, objects = hostile_source
    expected = EXPECTED[vendor]
    run = await run_batch(
        cell.sandbox, cell.storage, vendor, src, cell.dst, source_prefix="bad/", destination_prefix="out/"
    )
    total = len(objects)
    check_cell(run, cell.storage, cell.dst, total=total, exact_charges=True)
    got = {}
    for row in run.rows:
        name = row["source"].split("/bad/", 1)[1]
        got[name] = "done" if row["status"] == "done" else row["error_code"]
        if row["status"] == "rejected":
            assert MESSAGE_WORDS[row["error_code"]] in row["error_message"], row
            assert row["credits"] is None and row["possibly_charged"] == 0
    assert got == expected
    accepted = sum(1 for v in expected.values() if v == "done")
    # No vendor call for anything judged locally; one billed call per accepted image.
    calls = [r for r in cell.sandbox.admin.requests(vendor) if r["kind"] == "process"]
    assert len(calls) == accepted == run.charged
    outputs = {
        row["source"].split("/bad/", 1)[1]: row["destination"] for row in run.rows if row["status"] == "done"
    }
    # Odd names keep their relative path and characters, below the destination prefix.
    for name in (
        "with space/a b.png",
        "ünïcødé/商品.png",
        "hash#1.png",
        "question?x=1.png",
        "a/b/c/d/e/f/g/deep.png",
    ):
        assert outputs[name] == f"gs://{cell.dst}/out/{name}"
    # EXIF rotation is honoured: the output is the upright portrait with the subject at the top.
    rotated = assert_decodes(cell.storage.read(cell.dst, "out/exif-rotated.png"), "exif")
    assert rotated.size == upright_subject().size, rotated.size
    alpha_box = rotated.convert("RGBA").getchannel("A").getbbox()
    assert alpha_box is not None and alpha_box[3] <= rotated.height * 0.6, alpha_box
    # Animations: the first frame (96 x 96, the studio shot) is processed, documented.
    for name in ("animated-gif.png", "animated-webp.png"):
        first = assert_decodes(cell.storage.read(cell.dst, f"out/{name}"), name)
        assert first.size == (96, 96) and getattr(first, "n_frames", 1) == 1
        assert first.convert("RGBA").getchannel("A").getextrema()[0] == 0  # the studio frame was cut out
    # Palette with transparency and 16-bit inputs come out as normal cut-outs with alpha.
    for name in ("palette-transparent.png", "sixteen-bit.png", "cmyk.png", "gray.png"):
        image = assert_decodes(cell.storage.read(cell.dst, f"out/{name}"), name)
        assert image.mode == "RGBA", (name, image.mode)


@pytest.mark.slow
@pytest.mark.parametrize("vendor", ["pixelcut", "poof"])
async def test_over_the_vendor_byte_limit(cell: Cell, vendor: str) -> None:
    """
    A 25,000,001-byte object (over Pixelcut's 25 MB and Poof's 20 MB) is refused from the listing's
    size alone — not even downloaded — with 0 calls. (Pixian's byte cap is derived from its pixel cap,
    128 MB; its pixel limit is exercised above.)
    """
    bucket = cell.new_bucket("big")
    cell.storage.write(
        bucket, "bad/big.jpg", random.Random(2).randbytes(25_000_001), content_type="image/jpeg"
    )
    run = await run_batch(cell.sandbox, cell.storage, vendor, bucket, cell.dst, source_prefix="bad/")
    check_cell(run, cell.storage, cell.dst, total=1, exact_charges=True)
    (row,) = run.rows
    assert row["status"] == "rejected" and row["error_code"] == "file_size_too_large"
    assert "25,000,001 bytes" in row["error_message"] and "limit" in row["error_message"]
    assert cell.sandbox.admin.requests(vendor) == []


async def test_empty_prefix_is_nothing_to_do(cell: Cell) -> None:
    """An empty prefix plans 0 sources and runs 0 calls: nothing to do, not a failure."""
    run = await run_batch(
        cell.sandbox, cell.storage, "poof", cell.src, cell.dst, source_prefix="nothing-here/"
    )
    assert run.rows == [] and run.result.halt is None and run.charged == 0
    assert cell.sandbox.admin.requests("poof") == []


# -- bad parameters --------------------------------------------------------------------------------
def _remove(**kwargs):
    from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

    base = {"task_id": "t", "conn_id": "poof_default", "source_bucket": "src", "destination_bucket": "dst"}
    return RemoveBackgroundOperator(**{**base, **kwargs})


def _generate(**kwargs):
    from airflow_provider_bgremoval.operators.bucket import GenerateBackgroundOperator

    base = {"task_id": "t", "source_bucket": "src", "destination_bucket": "dst"}
    return GenerateBackgroundOperator(**{**base, **kwargs})


def _pixian_options(**kwargs):
    from airflow_provider_bgremoval.vendors.pixian import PixianOptions

    return PixianOptions(**kwargs)


BAD_PARAMETERS = {
    "invalid colour": (lambda: _remove(background_color="not-a-colour"), "background_color"),
    "translucent colour": (lambda: _remove(background_color="#ff000080"), "background_color"),
    "margin over 100%": (lambda: _remove(crop=True, margin="150%"), "margin"),
    "margin garbage": (lambda: _remove(crop=True, margin="wide"), "margin"),
    "unknown format": (lambda: _remove(output_format="bmp"), "output_format"),
    "margin without crop": (lambda: _remove(margin="5%"), "margin"),
    "jpeg quality": (lambda: _remove(jpeg_quality=0), "jpeg_quality"),
    "max_size": (lambda: _remove(max_size=(0, 10)), "max_size"),
    "on_error": (lambda: _remove(on_error="ignore"), "on_error"),
    "max_concurrency": (lambda: _remove(max_concurrency=0), "max_concurrency"),
    "max_credits": (lambda: _remove(max_credits="-1"), "max_credits"),
    "max_images": (lambda: _remove(max_images="many"), "max_images"),
    "pixelcut scene+prompt": (lambda: _generate(scene="marble", prompt="a kitchen"), "prompt"),
    "pixelcut unknown scene": (lambda: _generate(scene="moon"), "scene"),
    "pixian delta_png+target_size": (
        lambda: _pixian_options(delta_png=True, target_size=(100, 100)),
        "target_size",
    ),
    "destination inside source": (
        lambda: _remove(destination_bucket="src", source_prefix="a/", destination_prefix="a/out/")._spec(),
        "destination_prefix",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_bad_parameters_are_refused_before_any_call(vendor_connections, case: str) -> None:
    """Refused at DAG parse (operator construction) with the parameter named, before any vendor call."""
    build, parameter = BAD_PARAMETERS[case]
    with pytest.raises(InvalidOptionError) as info:
        build()
    assert info.value.parameter == parameter, str(info.value)
    assert f"invalid {parameter!r}" in str(info.value)  # the message names the parameter
    assert vendor_connections.admin.requests() == []
