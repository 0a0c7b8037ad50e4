"""The batch processors: what each sends its vendor for one image (over httpx.MockTransport)."""

from __future__ import annotations

import email.policy
import io
from email.parser import BytesParser
from pathlib import Path

import httpx
import pytest
from PIL import Image

from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.pipeline.processors import GenerationProcessor
from airflow_provider_bgremoval.retry import CallStats
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutGenerateOptions
from tests.support.connections import SleepRecorder, set_connection


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


class _Pixelcut:
    """Pixelcut's generate-background, recording each uploaded image: a 1024x1024 JPEG back."""

    def __init__(self) -> None:
        self.uploads: list[Image.Image] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        header = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=email.policy.HTTP).parsebytes(header + request.content)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "image":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                upload = Image.open(io.BytesIO(payload))
                upload.load()
                self.uploads.append(upload)
        scene = _save(Image.new("RGB", (1024, 1024), (120, 90, 60)), "JPEG")
        return httpx.Response(200, content=scene, headers={"content-type": "image/jpeg"})


@pytest.fixture
def pixelcut(monkeypatch: pytest.MonkeyPatch) -> _Pixelcut:
    set_connection(monkeypatch, "pixelcut_default", "pixelcut", password="sk_test")
    return _Pixelcut()


def _processor(fake: _Pixelcut) -> GenerationProcessor:
    transport = httpx.MockTransport(fake)
    hook = PixelcutHook(transport=transport, async_transport=transport, sleep=SleepRecorder())
    return GenerationProcessor(hook, PixelcutGenerateOptions.coerce({"scene": "marble"}))


async def test_generate_background_sends_an_opaque_rgba_photo_without_its_alpha(
    pixelcut: _Pixelcut, images_dir: Path
) -> None:
    # Pixelcut keeps an RGBA input's alpha as the subject's outline. Before: a photo saved as RGBA with
    # alpha 255 everywhere (a common PNG export) was sent so: nothing removed, the scene hidden behind the
    # whole photo, a credit spent on it.
    photo = Image.open(images_dir / "coffee.png").convert("RGBA")
    assert photo.getchannel("A").getextrema() == (255, 255)
    result = await _processor(pixelcut).process(_save(photo, "PNG"), "coffee.png", CallStats())
    assert result.content_type == "image/jpeg"
    (sent,) = pixelcut.uploads
    assert sent.mode == "RGB"
    assert sent.tobytes() == photo.convert("RGB").tobytes()  # lossless


@pytest.mark.parametrize("mode", ["RGBA", "P"])
async def test_generate_background_keeps_a_real_cut_outs_alpha(pixelcut: _Pixelcut, mode: str) -> None:
    cutout = Image.new("RGBA", (200, 160), (0, 0, 0, 0))
    cutout.paste((200, 30, 30, 255), (40, 40, 160, 120))
    data = _save(cutout if mode == "RGBA" else cutout.convert("P"), "PNG")
    if mode == "P":  # a palette image whose first entry (the background) is transparent
        data = _save(Image.open(io.BytesIO(data)), "PNG", transparency=0)
    await _processor(pixelcut).process(data, "cutout.png", CallStats())
    (sent,) = pixelcut.uploads
    assert "A" in sent.mode or "transparency" in sent.info
    assert sent.convert("RGBA").getpixel((5, 5))[3] == 0  # type: ignore[index]


async def test_generate_background_drops_an_unused_palette_transparency(pixelcut: _Pixelcut) -> None:
    image = Image.new("P", (100, 80), 1)
    image.putpalette([0, 0, 0, 90, 160, 200] + [0] * 762)
    await _processor(pixelcut).process(_save(image, "PNG", transparency=0), "flat.png", CallStats())
    (sent,) = pixelcut.uploads
    assert (sent.mode, "transparency" in sent.info) == ("RGB", False)
    assert sent.getpixel((5, 5)) == (90, 160, 200)
