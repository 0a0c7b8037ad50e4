"""Poof contract tests over a real socket, plus the vendor's own PyPI client (poofbg)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sandbox_helpers import decode, png_bytes, product_shot

from airflow_provider_bgremoval.sandbox import RunningSandbox

KEY = {"x-api-key": "pk_sandbox_poof_key"}


def poof(
    client: httpx.Client, image: bytes | None, headers: dict[str, str] | None = None, **data: str
) -> httpx.Response:
    files = {"image_file": ("p.png", image, "image/png")} if image is not None else {"other": ("x", b"x")}
    return client.post("/v1/remove", headers=KEY if headers is None else headers, files=files, data=data)


def envelope(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status
    body = r.json()
    assert body["code"] == code
    assert body["message"]
    assert isinstance(body["details"], str)
    assert body["request_id"].startswith("req_")
    assert body["request_id"] == r.headers["X-Request-ID"]
    return dict(body)


def test_remove_png_with_headers(client: httpx.Client, sandbox: RunningSandbox, product_png: bytes) -> None:
    r = poof(client, product_png)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    img = decode(r.content)
    assert img.mode == "RGBA"
    assert img.size == (320, 240)
    assert r.headers["X-Request-ID"].startswith("req_")
    assert int(r.headers["X-Processing-Time-Ms"]) >= 0
    assert (r.headers["X-Image-Width"], r.headers["X-Image-Height"]) == ("320", "240")
    charge = sandbox.admin.charges("poof")[0]
    assert charge["request_id"] == r.headers["X-Request-ID"]
    assert charge["credits"] == 1


@pytest.mark.parametrize(
    ("fmt", "media", "pil"),
    [("png", "image/png", "PNG"), ("jpg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")],
)
def test_formats(client: httpx.Client, product_png: bytes, fmt: str, media: str, pil: str) -> None:
    r = poof(client, product_png, format=fmt)
    assert r.headers["content-type"] == media
    assert decode(r.content).format == pil


@pytest.mark.parametrize("color", ["#0f0", "#00ff00", "rgb(0, 255, 0)", "lime"])
def test_channels_rgb_with_bg_color(client: httpx.Client, product_png: bytes, color: str) -> None:
    img = decode(poof(client, product_png, channels="rgb", bg_color=color).content)
    assert img.mode == "RGB"
    assert img.getpixel((2, 2)) == (0, 255, 0)


def test_rgb_defaults_to_white_and_alpha_channel(client: httpx.Client, product_png: bytes) -> None:
    assert decode(poof(client, product_png, channels="rgb").content).getpixel((2, 2)) == (255, 255, 255)
    matte = decode(poof(client, product_png, channels="alpha").content)
    assert matte.mode == "L"
    assert matte.getpixel((2, 2)) == 0
    assert matte.getpixel((160, 150)) == 255


@pytest.mark.parametrize(
    ("size", "longest"), [("preview", 256), ("small", 512), ("medium", 1024), ("large", 2048), ("full", 1200)]
)
def test_size_presets_cap_the_longest_side(client: httpx.Client, size: str, longest: int) -> None:
    big = png_bytes(product_shot((1200, 600)))
    r = poof(client, big, size=size)
    w, h = decode(r.content).size
    assert max(w, h) == min(longest, 1200)
    assert (r.headers["X-Image-Width"], r.headers["X-Image-Height"]) == (
        str(w),
        str(h),
    )


def test_crop_and_unknown_fields_ignored(client: httpx.Client, product_png: bytes) -> None:
    r = poof(client, product_png, crop="true", some_future_field="x")
    w, h = decode(r.content).size
    assert w < 320
    assert h < 240
    assert decode(poof(client, product_png, crop="false").content).size == (320, 240)


# -- generation B crop padding: a fraction of the subject's size, on each side -------------------


def tight_crop(client: httpx.Client, image: bytes) -> Image.Image:
    return decode(poof(client, image, crop="true", padding="0").content)


@pytest.mark.parametrize(
    ("padding", "fx", "fy"),
    [
        (None, 0.1, 0.1),  # the documented default, 10%
        ("10%", 0.1, 0.1),
        ("0.25", 0.25, 0.25),
        ("25%,5%", 0.25, 0.05),
        ("0.5,0", 0.5, 0.0),
        ("7.5%", 0.075, 0.075),
    ],
)
def test_crop_padding_is_a_fraction_of_the_subject_on_each_side(
    client: httpx.Client, product_png: bytes, padding: str | None, fx: float, fy: float
) -> None:
    tw, th = tight_crop(client, product_png).size
    assert (tw, th) < (320, 240)
    r = poof(client, product_png, crop="true", **({} if padding is None else {"padding": padding}))
    assert r.status_code == 200, r.text
    size = (tw + 2 * round(fx * tw), th + 2 * round(fy * th))
    assert decode(r.content).size == size
    assert (r.headers["X-Image-Width"], r.headers["X-Image-Height"]) == tuple(map(str, size))


def test_crop_padding_beyond_the_image_is_transparent(client: httpx.Client, product_png: bytes) -> None:
    tight = tight_crop(client, product_png)
    tw, th = tight.size
    padded = decode(poof(client, product_png, crop="true", padding="100%").content)
    assert padded.size == (3 * tw, 3 * th)
    assert 3 * th > 240  # reaches past the original image
    assert padded.getpixel((0, 0)) == (0, 0, 0, 0)
    assert padded.getpixel((3 * tw - 1, 3 * th - 1)) == (0, 0, 0, 0)
    assert padded.crop((tw, th, 2 * tw, 2 * th)).tobytes() == tight.tobytes()
    opaque = decode(
        poof(client, product_png, crop="true", padding="100%", channels="rgb", bg_color="#0f0").content
    )
    assert opaque.getpixel((0, 0)) == (0, 255, 0)


def test_padding_is_used_only_with_crop(client: httpx.Client, product_png: bytes) -> None:
    assert decode(poof(client, product_png, padding="25%").content).size == (320, 240)
    assert decode(poof(client, product_png, crop="false", padding="25%").content).size == (320, 240)


def test_default_crop_padding_is_a_setting(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    tight = tight_crop(client, product_png).size
    sandbox.admin.settings(poof_crop_padding="0")  # generation A: a crop is tight
    assert decode(poof(client, product_png, crop="true").content).size == tight
    sandbox.admin.settings(poof_crop_padding="50%")
    half = (tight[0] + 2 * round(0.5 * tight[0]), tight[1] + 2 * round(0.5 * tight[1]))
    assert decode(poof(client, product_png, crop="true").content).size == half
    assert decode(poof(client, product_png, crop="true", padding="0").content).size == tight
    with pytest.raises(ValueError, match="poof_crop_padding"):
        sandbox.admin.settings(poof_crop_padding="wide")


@pytest.mark.parametrize(
    "data",
    [
        {"format": "gif"},
        {"channels": "cmyk"},
        {"size": "huge"},
        {"crop": "sometimes"},
        {"bg_color": "not-a-colour"},
        {"crop": "true", "padding": "wide"},
        {"crop": "true", "padding": "-5%"},
        {"crop": "true", "padding": "10%,5%,1%"},
        {"crop": "true", "padding": ""},
        {"padding": "wide"},
        {"crop": "true", "padding": "50"},  # 50 x the subject per side: over 6000 px
    ],
)
def test_validation_errors(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes, data: dict[str, str]
) -> None:
    envelope(poof(client, product_png, **data), 400, "validation_error")
    assert sandbox.admin.total_charged() == 0


def test_input_errors(client: httpx.Client, blank_png: bytes) -> None:
    envelope(poof(client, None), 400, "missing_image")
    envelope(client.post("/v1/remove", headers=KEY, json={"image_file": "x"}), 400, "validation_error")
    envelope(poof(client, b"\x89PNG" + b"\0" * (20 * 1024 * 1024)), 400, "image_too_large")
    envelope(poof(client, b"not an image"), 422, "invalid_image")
    envelope(poof(client, png_bytes(product_shot(), "GIF")), 422, "invalid_image")
    envelope(poof(client, blank_png), 422, "invalid_image")


def test_20mb_is_20_000_000_bytes(client: httpx.Client) -> None:
    # "Maximum size: 20MB" in decimal megabytes, as the client reads it (tests/unit/contract).
    at_limit = b"\x89PNG" + b"\0" * (20_000_000 - 4)
    envelope(poof(client, at_limit), 422, "invalid_image")  # size accepted, content refused
    envelope(poof(client, at_limit + b"\0"), 400, "image_too_large")


def test_auth_payment_and_revoked(client: httpx.Client, sandbox: RunningSandbox, product_png: bytes) -> None:
    envelope(poof(client, product_png, headers={}), 401, "authentication_error")
    envelope(poof(client, product_png, headers={"x-api-key": "pk_nope"}), 401, "authentication_error")
    envelope(client.get("/v1/me"), 401, "authentication_error")
    assert poof(client, product_png, headers={"X-Api-Key": KEY["x-api-key"]}).status_code == 200
    sandbox.admin.set_balance("poof", 0)
    envelope(poof(client, product_png), 402, "payment_required")
    sandbox.admin.set_faults("poof", auth_revoked=True)
    envelope(poof(client, product_png), 403, "permission_denied")


def test_me_reports_max_minus_used(client: httpx.Client, sandbox: RunningSandbox, product_png: bytes) -> None:
    me = client.get("/v1/me", headers=KEY).json()
    assert me["maxCredits"] - me["usedCredits"] == 1000
    assert me["plan"] == "Pro"
    assert set(me) == {"organizationId", "plan", "maxCredits", "usedCredits", "autoRechargeThreshold"}
    for _ in range(3):
        assert poof(client, product_png).status_code == 200
    me = client.get("/v1/me", headers=KEY).json()
    assert me["usedCredits"] == 3
    assert me["maxCredits"] - me["usedCredits"] == 997
    sandbox.admin.set_balance("poof", 10)
    me = client.get("/v1/me", headers=KEY).json()
    assert me["maxCredits"] - me["usedCredits"] == 10


# -- the vendor's PyPI client, poofbg 0.4.1 (every statement in docs/sandbox.md "The vendors' own
# -- clients" has a test here) --------------------------------------------------------------------


def test_poofbg_client_against_the_sandbox(sandbox: RunningSandbox, product_png: bytes) -> None:
    from poof import PaymentRequiredError, PermissionDeniedError, Poof, ValidationError
    from poof.exceptions import AuthError

    with Poof(api_key="pk_sandbox_poof_key", base_url=sandbox.poof_base_url, timeout=30) as client:
        result = client.remove_background(product_png, format="webp", crop=True, size="preview")
        assert result.content_type == "image/webp"
        assert result.request_id
        assert result.request_id.startswith("req_")
        assert result.width is not None
        assert result.width <= 256
        img = Image.open(io.BytesIO(result.data))
        assert img.size == (result.width, result.height)
        info = client.me()
        assert info["maxCredits"] - info["usedCredits"] == 999
        with pytest.raises(ValidationError) as invalid:
            client.remove_background(product_png, format="gif")  # type: ignore[arg-type]
        assert invalid.value.code == "validation_error"
        sandbox.admin.set_faults("poof", auth_revoked=True)
        with pytest.raises(PermissionDeniedError):
            client.remove_background(product_png)
        sandbox.admin.clear_faults()
        sandbox.admin.set_balance("poof", 0)
        with pytest.raises(PaymentRequiredError):
            client.remove_background(product_png)
    with Poof(api_key="pk_wrong", base_url=sandbox.poof_base_url) as bad, pytest.raises(AuthError):
        bad.me()


@pytest.mark.parametrize(
    ("kwargs", "mode", "size"),
    [
        ({}, "RGBA", (320, 240)),
        ({"format": "jpg"}, "RGB", (320, 240)),
        ({"channels": "rgb", "bg_color": "#00ff00"}, "RGB", (320, 240)),
        ({"channels": "alpha"}, "L", (320, 240)),
        ({"crop": True}, "RGBA", None),
    ],
)
def test_poofbg_parameters_that_work(
    sandbox: RunningSandbox,
    product_png: bytes,
    tmp_path: Path,
    kwargs: dict[str, Any],
    mode: str,
    size: tuple[int, int] | None,
) -> None:
    from poof import Poof

    path = tmp_path / "in.png"
    path.write_bytes(product_png)
    with Poof(api_key=sandbox.poof_key, base_url=sandbox.poof_base_url) as client:
        for image in (product_png, path, io.BytesIO(product_png)):  # bytes, a path, a file object
            result = client.remove_background(image, **kwargs)
            img = decode(result.data)
            assert img.mode == mode
            if size is None:
                assert img.width < 320
            else:
                assert img.size == size
    assert sandbox.admin.total_charged("poof") == 3


def test_poofbg_sizes_work(sandbox: RunningSandbox) -> None:
    from poof import Poof

    big = png_bytes(product_shot((2400, 1800)))
    with Poof(api_key=sandbox.poof_key, base_url=sandbox.poof_base_url) as client:
        longest = {
            size: max(decode(client.remove_background(big, size=size).data).size)  # type: ignore[arg-type]
            for size in ("preview", "small", "medium", "large", "full")
        }
        hd = decode(client.remove_background(big, size="hd").data)
    assert longest == {"preview": 256, "small": 512, "medium": 1024, "large": 2048, "full": 2400}
    assert hd.width * hd.height <= 4_000_000 < 2400 * 1800


def test_poofbg_url_input_does_not_work(sandbox: RunningSandbox, product_png: bytes) -> None:
    from poof import Poof, ValidationError

    url = f"{sandbox.url}/_results/{sandbox.state.store_result(product_png, 'image/png', 'png')}"
    with (
        Poof(api_key=sandbox.poof_key, base_url=sandbox.poof_base_url) as client,
        pytest.raises(ValidationError) as info,
    ):
        client.remove_background(url=url)  # a form without a file: not multipart
    assert (info.value.status_code, info.value.code) == (400, "validation_error")
    assert sandbox.admin.total_charged("poof") == 0


@pytest.mark.parametrize("ratio", ["1:1", "16:9"])
def test_poofbg_crop_ratios_do_not_work(sandbox: RunningSandbox, product_png: bytes, ratio: str) -> None:
    from poof import Poof, ValidationError

    with (
        Poof(api_key=sandbox.poof_key, base_url=sandbox.poof_base_url) as client,
        pytest.raises(ValidationError) as info,
    ):
        client.remove_background(product_png, crop=ratio)
    assert (info.value.status_code, info.value.code) == (400, "validation_error")
    assert sandbox.admin.total_charged("poof") == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 100},
        {"height": 50},
        {"width": 100, "height": 100, "fit": "cover"},
        {"width": 600, "height": 600, "fit": "contain"},
        {"fit": "scale-down"},
    ],
)
def test_poofbg_width_height_fit_are_ignored_and_charged(
    sandbox: RunningSandbox, product_png: bytes, kwargs: dict[str, Any]
) -> None:
    from poof import Poof

    with Poof(api_key=sandbox.poof_key, base_url=sandbox.poof_base_url) as client:
        result = client.remove_background(product_png, **kwargs)
    assert decode(result.data).size == (result.width, result.height) == (320, 240)  # not resized
    assert sandbox.admin.total_charged("poof") == 1


def test_poofbg_padding_pads_the_crop(sandbox: RunningSandbox, product_png: bytes) -> None:
    from poof import Poof

    with Poof(api_key=sandbox.poof_key, base_url=sandbox.poof_base_url) as client:
        tw, th = decode(client.remove_background(product_png, crop=True, padding="0").data).size
        for padding, fraction in ((None, 0.1), ("25%", 0.25), ("0.5", 0.5)):
            padded = decode(client.remove_background(product_png, crop=True, padding=padding).data)
            assert padded.size == (tw + 2 * round(fraction * tw), th + 2 * round(fraction * th))
    assert sandbox.admin.total_charged("poof") == 4


def test_poofbg_video_jobs_do_not_work(sandbox: RunningSandbox) -> None:
    from poof import Poof, PoofError

    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
    with Poof(api_key=sandbox.poof_key, base_url=sandbox.poof_base_url) as client:
        with pytest.raises(PoofError) as upload:
            client.remove_background(mp4)
        with pytest.raises(PoofError) as job:
            client.get_job("job_8f3a1c2e9b7d4a10")
        with pytest.raises(PoofError) as waited:
            client.wait_for_job("job_8f3a1c2e9b7d4a10", timeout=1)
    assert (upload.value.status_code, upload.value.code) == (422, "invalid_image")
    assert job.value.status_code == waited.value.status_code == 404
    assert sandbox.admin.total_charged("poof") == 0
