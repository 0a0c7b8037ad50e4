"""Pixian contract tests over a real socket, plus the docs' curl examples and the pixian-ai client."""

from __future__ import annotations

import base64
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from PIL import Image, ImageChops
from sandbox_helpers import decode, png_bytes, product_shot

from airflow_provider_bgremoval.sandbox import RunningSandbox, run_sandbox

AUTH = ("px_sandbox_id", "px_sandbox_secret")
PATH = "/api/v2/remove-background"


def pixian(client: httpx.Client, image: bytes | None, auth: Any = AUTH, **data: str) -> httpx.Response:
    files = {"image": ("p.png", image, "image/png")} if image is not None else None
    if files is None and not data:
        data = {}
    return client.post(PATH, auth=auth, files=files, data=data)


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"status", "code", "message"}
    assert body["error"]["status"] == r.status_code
    assert isinstance(body["error"]["code"], int)
    return dict(body["error"])


def test_basic_png_and_headers(client: httpx.Client, sandbox: RunningSandbox, product_png: bytes) -> None:
    r = pixian(client, product_png)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    img = decode(r.content)
    assert img.mode == "RGBA"
    assert img.size == (320, 240)
    assert r.headers["X-Credits-Charged"] == "1.0"
    assert "X-Credits-Calculated" not in r.headers
    assert r.headers["X-Input-Orientation"] == "1"
    assert r.headers["X-Input-Size"] == "320 240"
    assert r.headers["X-Result-Size"] == "320 240"
    top, left, width, height = map(int, r.headers["X-Input-Foreground"].split())
    assert 20 <= top <= 30
    assert 90 <= left <= 100
    assert 120 <= width <= 135
    assert 160 <= height <= 175
    assert r.headers["X-Result-Foreground"] == r.headers["X-Input-Foreground"]
    assert client.get("/api/v2/account", auth=AUTH).json() == {
        "creditPack": "sandbox",
        "state": "active",
        "useBefore": "2099-12-31T00:00:00Z",
        "credits": 999.0,
    }


def test_credit_headers_are_plain_decimals(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    sandbox.admin.settings(costs={"pixian_per_image": "0.00005"})
    assert pixian(client, product_png).headers["X-Credits-Charged"] == "0.00005"  # not "5e-05"
    assert pixian(client, product_png, test="true").headers["X-Credits-Calculated"] == "0.00005"
    assert sandbox.admin.total_charged("pixian") == 0.00005


def test_test_mode_is_free_watermarked_and_reports_calculated(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    sandbox.admin.settings(costs={"pixian_per_image": 0.25})
    sandbox.admin.set_balance("pixian", 0)
    real = pixian(client, product_png)
    assert real.status_code == 402
    test = pixian(client, product_png, test="true")
    assert test.status_code == 200
    assert test.headers["X-Credits-Charged"] == "0.0"
    assert test.headers["X-Credits-Calculated"] == "0.25"
    sandbox.admin.set_balance("pixian", 1)
    real = pixian(client, product_png)
    assert real.headers["X-Credits-Charged"] == "0.25"
    diff = ImageChops.difference(decode(real.content).convert("RGB"), decode(test.content).convert("RGB"))
    assert diff.getbbox() is not None  # the watermark
    assert client.get("/api/v2/account", auth=AUTH).json()["credits"] == 0.75


def test_background_color_output_formats(client: httpx.Client, product_png: bytes) -> None:
    r = pixian(client, product_png, **{"background.color": "#0055FF"})
    assert r.headers["content-type"] == "image/jpeg"  # auto -> jpeg when opaque
    img = decode(r.content).convert("RGB")
    assert all(abs(a - b) < 12 for a, b in zip(img.getpixel((3, 3)), (0, 85, 255), strict=False))
    r = pixian(client, product_png, **{"background.color": "#0055FF", "output.format": "png"})
    img = decode(r.content)
    assert r.headers["content-type"] == "image/png"
    assert img.convert("RGB").getpixel((3, 3)) == (0, 85, 255)
    low = pixian(client, product_png, **{"output.format": "jpeg", "output.jpeg_quality": "5"})
    high = pixian(client, product_png, **{"output.format": "jpeg", "output.jpeg_quality": "100"})
    assert low.headers["content-type"] == "image/jpeg"
    assert len(low.content) < len(high.content)


def test_crop_margin_target_size(client: httpx.Client, product_png: bytes) -> None:
    base = pixian(client, product_png)
    _, _, fw, fh = map(int, base.headers["X-Input-Foreground"].split())
    crop = pixian(client, product_png, **{"result.crop_to_foreground": "true"})
    assert decode(crop.content).size == (fw, fh)
    assert crop.headers["X-Result-Foreground"] == f"0 0 {fw} {fh}"
    margin = pixian(
        client, product_png, **{"result.crop_to_foreground": "true", "result.margin": "10px 20px 30px 40px"}
    )
    assert decode(margin.content).size == (fw + 60, fh + 40)
    assert margin.headers["X-Result-Foreground"] == f"10 40 {fw} {fh}"
    uncropped = pixian(client, product_png, **{"result.margin": "10%"})  # applied even without crop
    assert decode(uncropped.content).size == (320 + 64, 240 + 48)
    for valign in ("top", "middle", "bottom"):
        r = pixian(
            client,
            product_png,
            **{
                "result.crop_to_foreground": "True",
                "result.target_size": "400 600",
                "result.vertical_alignment": valign,
            },
        )
        assert decode(r.content).size == (400, 600)
        assert r.headers["X-Result-Size"] == "400 600"
        top, left, width, height = map(int, r.headers["X-Result-Foreground"].split())
        assert width == pytest.approx(400, abs=2)
        assert abs(left + width / 2 - 200) <= 2
        expected_top = {"top": 0, "middle": (600 - height) // 2, "bottom": 600 - height}[valign]
        assert abs(top - expected_top) <= 2
    inset = pixian(client, product_png, **{"result.target_size": "400 400", "result.margin": "50px"})
    top, left, width, height = map(int, inset.headers["X-Result-Foreground"].split())
    assert decode(inset.content).size == (400, 400)
    assert left >= 50
    assert top >= 50
    assert left + width <= 350


def test_target_size_has_no_invented_per_side_limit(client: httpx.Client, product_png: bytes) -> None:
    # Pixian documents no range for result.target_size: any positive size renders ...
    wide = pixian(client, product_png, **{"result.target_size": "30000 20"})
    assert wide.status_code == 200
    assert wide.headers["X-Result-Size"] == "30000 20"
    # ... up to the sandbox's own rendering limit, a choice listed in docs/sandbox.md.
    assert pixian(client, product_png, **{"result.target_size": "5000 5000"}).status_code == 200
    too_big = pixian(client, product_png, **{"result.target_size": "5001 5000"})
    assert (too_big.status_code, error_of(too_big)["code"]) == (400, 1002)
    assert "25,000,000" in error_of(too_big)["message"]


def test_no_invented_64_mib_upload_cap(client: httpx.Client, sandbox: RunningSandbox) -> None:
    # Pixian documents a pixel cap, not a byte cap: a file over 64 MiB is read and judged by its
    # content (here: not an image), not refused for its size.
    big = b"\x89PNG" + b"\0" * (64 * 1024 * 1024)
    r = pixian(client, big)
    assert (r.status_code, error_of(r)["code"]) == (400, 1006)
    assert sandbox.admin.total_charged() == 0


def test_delta_png_decodes_back_to_the_full_cutout(client: httpx.Client, product_png: bytes) -> None:
    full = decode(pixian(client, product_png, **{"output.format": "png"}).content)
    delta_resp = pixian(
        client,
        product_png,
        **{"output.format": "delta_png", "background.color": "#ff0000", "result.crop_to_foreground": "true"},
    )
    assert delta_resp.headers["content-type"] == "image/png"
    delta = decode(delta_resp.content).convert("RGBA")
    original = decode(product_png).convert("RGBA")
    assert delta.size == original.size  # crop/background are ignored with delta_png
    # Documented decoding rule: alpha 0 + white -> the original pixel; alpha 0 + black -> transparent;
    # anything with alpha > 0 is kept as is.
    d, o = delta.load(), original.load()
    rebuilt = Image.new("RGBA", delta.size)
    rp = rebuilt.load()
    colours = set()
    for y in range(delta.height):
        for x in range(delta.width):
            px = d[x, y]
            if px[3] == 0:
                colours.add(px)
                rp[x, y] = o[x, y] if px[:3] == (255, 255, 255) else (0, 0, 0, 0)
            else:
                rp[x, y] = px
    assert colours == {(0, 0, 0, 0), (255, 255, 255, 0)}
    assert rebuilt.getchannel("A").tobytes() == full.getchannel("A").tobytes()
    visible = full.getchannel("A").point(lambda a: 255 if a else 0)
    black = Image.new("RGBA", full.size, (0, 0, 0, 0))
    assert (
        Image.composite(rebuilt, black, visible).tobytes() == Image.composite(full, black, visible).tobytes()
    )


def test_max_pixels_shrinks_and_input_size_is_before_constraints(
    client: httpx.Client, product_png: bytes
) -> None:
    r = pixian(client, product_png, max_pixels="19200")
    assert r.headers["X-Input-Size"] == "320 240"
    w, h = map(int, r.headers["X-Result-Size"].split())
    assert w * h <= 19200
    assert decode(r.content).size == (w, h)
    _, left, width, _ = map(int, r.headers["X-Input-Foreground"].split())
    assert 90 <= left <= 100
    assert 120 <= width <= 136


def test_exif_orientation_is_applied_and_reported(client: httpx.Client) -> None:
    img = product_shot((320, 240))
    exif = Image.Exif()
    exif[0x0112] = 6
    r = pixian(client, png_bytes(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert r.status_code == 200
    assert r.headers["X-Input-Orientation"] == "6"
    assert r.headers["X-Input-Size"] == "240 320"
    assert decode(r.content).size == (240, 320)


def test_base64_and_url_inputs(client: httpx.Client, sandbox: RunningSandbox, product_png: bytes) -> None:
    r = client.post(PATH, auth=AUTH, data={"image.base64": base64.b64encode(product_png).decode()})
    assert r.status_code == 200
    assert decode(r.content).size == (320, 240)
    # "at most 1 megabyte": 1,000,000 characters (decimal megabytes, as the client reads it)
    at_limit = "A" * 1_000_000
    r = client.post(PATH, auth=AUTH, data={"image.base64": at_limit})
    assert (r.status_code, error_of(r)["code"]) == (400, 1006)  # size accepted, not an image
    r = client.post(PATH, auth=AUTH, data={"image.base64": at_limit + "AAAA"})
    assert r.status_code == 400
    assert error_of(r)["code"] == 1003
    url = client.post(
        "/v1/remove-background",
        headers={"X-API-KEY": "sk_sandbox_pixelcut_key"},
        files={"image": ("p.png", product_png)},
    ).json()["result_url"]
    r = client.post(PATH, auth=AUTH, files={"image.url": (None, url)})
    assert r.status_code == 200
    r = client.post(PATH, auth=AUTH, data={"image.url": "http://127.0.0.1:9/none.png"})
    assert r.status_code == 400
    assert error_of(r)["code"] == 1006


def served(sandbox: RunningSandbox, data: bytes, media_type: str, suffix: str) -> str:
    """A URL on the sandbox that serves ``data`` (its result store, named ``<uuid>.<suffix>``)."""
    return f"{sandbox.url}/_results/{sandbox.state.store_result(data, media_type, suffix)}"


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "JPEG", "PNG", "TIFF"])
def test_image_url_documented_file_types(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes, fmt: str
) -> None:
    # image.url "Must be a .bmp, .gif, .jpeg, .png, or .tiff file."
    data = png_bytes(decode(product_png).convert("RGB"), fmt)
    r = client.post(PATH, auth=AUTH, data={"image.url": served(sandbox, data, f"image/{fmt.lower()}", "bin")})
    assert r.status_code == 200, r.text
    assert decode(r.content).size == (320, 240)


def test_image_url_of_another_file_type_is_refused(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    webp = png_bytes(decode(product_png), "WEBP")
    # judged by what the URL serves, not by its name (docs/sandbox.md)
    for url in (served(sandbox, webp, "image/webp", "webp"), served(sandbox, webp, "image/png", "png")):
        r = client.post(PATH, auth=AUTH, data={"image.url": url})
        assert (r.status_code, error_of(r)["code"]) == (400, 1006)
        assert ".bmp, .gif, .jpeg, .png or .tiff" in error_of(r)["message"]
    assert sandbox.admin.total_charged() == 0
    # the same WebP bytes uploaded as a file are processed (the docs restrict only image.url)
    assert pixian(client, webp).status_code == 200


@pytest.mark.parametrize(
    "data",
    [
        {"test": "yes"},
        {"max_pixels": "99"},
        {"max_pixels": "25000001"},
        {"background.color": "0055FF"},
        {"background.color": "#05F"},
        {"result.crop_to_foreground": "sure"},
        {"result.margin": "10px 10px 10px 10px 10px"},
        {"result.margin": "10em"},
        {"result.target_size": "100x100"},
        {"result.vertical_alignment": "center"},
        {"output.format": "webp"},
        {"output.jpeg_quality": "0"},
        {"output.jpeg_quality": "101"},
    ],
)
def test_invalid_parameters_are_400(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes, data: dict[str, str]
) -> None:
    r = pixian(client, product_png, **data)
    assert r.status_code == 400
    assert error_of(r)["code"] == 1002
    assert sandbox.admin.total_charged() == 0


def test_image_errors(client: httpx.Client, blank_png: bytes) -> None:
    r = pixian(client, b"garbage bytes")
    assert r.status_code == 400
    assert error_of(r) == {
        "status": 400,
        "code": 1006,
        "message": "Failed to read the supplied image. ",
    }
    r = client.post(PATH, auth=AUTH, data={"test": "true"})
    assert r.status_code == 400
    assert error_of(r)["code"] == 1001
    r = pixian(client, blank_png)
    assert r.status_code == 400
    assert error_of(r)["code"] == 1007
    huge = png_bytes(Image.new("1", (8000, 4001)))
    r = pixian(client, huge)
    assert r.status_code == 400
    assert error_of(r)["code"] == 1003


def test_the_pack_goes_dormant_at_use_before(product_png: bytes) -> None:
    # "useBefore: Indicates when your credit pack will go dormant. You will need to buy another credit
    # pack before this date to continue using the API."
    use_before = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with run_sandbox(pixian_use_before=use_before) as sb, httpx.Client(base_url=sb.url, trust_env=False) as c:
        assert c.get("/api/v2/account", auth=AUTH).json()["state"] == "active"
        assert pixian(c, product_png).status_code == 200
        sb.admin.advance_clock(2 * 86400)  # the sandbox's date passes useBefore
        account = c.get("/api/v2/account", auth=AUTH).json()
        assert (account["state"], account["useBefore"]) == ("dormant", use_before)
        r = pixian(c, product_png)
        assert (r.status_code, error_of(r)["code"]) == (402, 1103)
        assert pixian(c, product_png, test="true").status_code == 200  # testing needs no pack
        assert sb.admin.total_charged("pixian") == 1
    with (
        run_sandbox(pixian_use_before="2020-01-01") as sb,
        httpx.Client(base_url=sb.url, trust_env=False) as c,
    ):
        r = pixian(c, product_png)  # dormant from the start
        assert (r.status_code, error_of(r)["code"]) == (402, 1103)


def test_auth_and_account_states(client: httpx.Client, sandbox: RunningSandbox, product_png: bytes) -> None:
    for auth in (None, ("px_sandbox_id", "wrong"), ("nobody", "px_sandbox_secret")):
        r = pixian(client, product_png, auth=auth)
        assert r.status_code == 401
        assert error_of(r)["code"] == 1101
        assert client.get("/api/v2/account", auth=auth).status_code == 401
    sandbox.admin.set_balance("pixian", state="dormant")
    r = pixian(client, product_png)
    assert r.status_code == 402
    assert error_of(r)["code"] == 1103
    assert client.get("/api/v2/account", auth=AUTH).json()["state"] == "dormant"
    assert pixian(client, product_png, test="true").status_code == 200  # testing stays free
    sandbox.admin.set_balance("pixian", 0.5, state="active")
    r = pixian(client, product_png)
    assert r.status_code == 402
    assert error_of(r)["code"] == 1102
    sandbox.admin.set_balance("pixian", 5, key="other_id", secret="other_secret")
    assert pixian(client, product_png, auth=("other_id", "other_secret")).status_code == 200
    assert client.get("/api/v2/account", auth=("other_id", "other_secret")).json()["credits"] == 4.0


def test_rate_limit_429(client: httpx.Client, sandbox: RunningSandbox, product_png: bytes) -> None:
    sandbox.admin.set_faults("pixian", fault="rate_limited", next=1, retry_after=5)
    r = pixian(client, product_png)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "5"
    assert error_of(r)["code"] == 1201


# -- the docs' curl examples --------------------------------------------------------------------

CURL = shutil.which("curl")


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert CURL, "curl is needed for the documented examples"
    return subprocess.run(
        [CURL, "-sS", "--fail-with-body", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_curl_examples_from_the_pixian_document(
    sandbox: RunningSandbox, tmp_path: Path, product_png: bytes
) -> None:
    example = tmp_path / "example.jpeg"
    decode(product_png).convert("RGB").save(example, "JPEG", quality=95)
    url = sandbox.url
    # $ curl https://api.pixian.ai/api/v2/remove-background \
    #     -u xyz123:[secret] -F image=@example.jpeg -o pixian_result.png
    out = tmp_path / "pixian_result.png"
    done = _curl(
        f"{url}/api/v2/remove-background",
        "-u",
        "px_sandbox_id:px_sandbox_secret",
        "-F",
        f"image=@{example}",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).format == "PNG"
    assert Image.open(out).mode == "RGBA"
    # $ curl https://api.pixian.ai/api/v2/remove-background -u xyz123:[secret] \
    #     -F 'image.url=https://example.com/example.jpeg' -o pixian_result.png
    src = httpx.post(
        f"{url}/v1/remove-background",
        headers={"X-API-KEY": "sk_sandbox_pixelcut_key"},
        files={"image": ("e.jpeg", example.read_bytes())},
    ).json()["result_url"]
    out2 = tmp_path / "pixian_result2.png"
    done = _curl(
        f"{url}/api/v2/remove-background",
        "-u",
        "px_sandbox_id:px_sandbox_secret",
        "-F",
        f"image.url={src}",
        "-o",
        str(out2),
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out2).format == "PNG"
    # $ curl "https://api.pixian.ai/api/v2/account" -u pxxbbzb96n2w8am:[secret]
    done = _curl(f"{url}/api/v2/account", "-u", "px_sandbox_id:px_sandbox_secret")
    assert done.returncode == 0
    assert '"credits":998.0' in done.stdout.replace(" ", "")
    # a wrong secret fails the way the docs' samples expect (non-200 with the error object)
    done = _curl(f"{url}/api/v2/account", "-u", "px_sandbox_id:nope")
    assert done.returncode != 0
    assert '"status":401' in done.stdout


# -- the vendor's PyPI client, pixian-ai 1.0.0 (every statement in docs/sandbox.md "The vendors' own
# -- clients" has a test here) --------------------------------------------------------------------


def test_pixian_ai_has_no_base_url_and_posts_to_the_real_host(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    import pixian_ai.client
    from pixian_ai import PixianAI

    assert list(inspect.signature(PixianAI.__init__).parameters) == ["self", "api_id", "api_secret"]
    seen: list[str] = []

    def record(url: str, *args: Any, **kwargs: Any) -> requests.Response:
        seen.append(url)
        response = requests.Response()
        response.status_code, response._content = 200, b"PNG"
        return response

    monkeypatch.setattr(pixian_ai.client.requests, "post", record)  # nothing leaves the machine
    PixianAI("px_sandbox_id", "px_sandbox_secret").remove_background(image_url="https://x.example/a.png")
    assert seen == ["https://api.pixian.ai/api/v2/remove-background"]


@pytest.fixture
def pixian_ai_client(sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> Any:
    """pixian-ai's client with its hard-coded URL patched to the sandbox (the documented recipe)."""
    import pixian_ai.client
    from pixian_ai import PixianAI

    real_post = requests.post

    def redirected(url: str, *args: Any, **kwargs: Any) -> requests.Response:
        return real_post(url.replace("https://api.pixian.ai", sandbox.url), *args, **kwargs)

    monkeypatch.setattr(pixian_ai.client.requests, "post", redirected)
    return PixianAI("px_sandbox_id", "px_sandbox_secret")


def test_pixian_ai_client_against_the_sandbox(
    sandbox: RunningSandbox, pixian_ai_client: Any, tmp_path: Path, product_png: bytes
) -> None:
    import pixian_ai.client
    from pixian_ai import PixianAI

    path = tmp_path / "in.png"
    path.write_bytes(product_png)
    client = pixian_ai_client
    result = client.remove_background(
        image_path=str(path), result_crop_to_foreground=True, result_margin="10px"
    )
    img = decode(result.content)
    assert img.mode == "RGBA"
    assert img.width < 320
    jpeg = client.remove_background(
        image_base64=base64.b64encode(product_png).decode(), background_color="#00FF00"
    )
    assert decode(jpeg.content).format == "JPEG"
    delta = client.remove_background(image_path=str(path), output_format="delta_png")
    assert decode(delta.content).size == (320, 240)
    with pytest.raises(pixian_ai.client.PixianAIException, match="401"):
        PixianAI("px_sandbox_id", "bad").remove_background(image_path=str(path))
    assert sandbox.admin.total_charged("pixian") == 3


def test_pixian_ai_every_parameter_works(
    sandbox: RunningSandbox, pixian_ai_client: Any, tmp_path: Path, product_png: bytes
) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(product_png)
    client = pixian_ai_client
    url = served(sandbox, product_png, "image/png", "png")
    assert decode(client.remove_background(image_url=url).content).size == (320, 240)
    fitted = client.remove_background(
        image_path=str(path), result_target_size="400 600", result_vertical_alignment="bottom"
    )
    assert decode(fitted.content).size == (400, 600)
    small = client.remove_background(image_path=str(path), max_pixels=10_000)
    assert decode(small.content).width * decode(small.content).height <= 10_000
    png = client.remove_background(image_path=str(path), output_format="png", background_color="#0055FF")
    assert decode(png.content).format == "PNG"
    low, high = (
        client.remove_background(image_path=str(path), output_format="jpeg", output_jpeg_quality=quality)
        for quality in (10, 95)
    )
    assert len(low.content) < len(high.content)
    framed = client.remove_background(
        image_path=str(path), result_crop_to_foreground=True, result_margin="10.0%"
    )
    assert decode(framed.content).width < 320
    # pixian-ai always sends its defaults (max_pixels, result.margin=0px, output.format=auto ...)
    # and booleans as Python's "False"/"True"; the sandbox takes them all.
    first, last = (
        sandbox.admin.requests("pixian")[0]["params"],
        sandbox.admin.requests("pixian")[-1]["params"],
    )
    assert (first["result.crop_to_foreground"], last["result.crop_to_foreground"]) == ("False", "True")
    assert (first["max_pixels"], first["result.margin"], first["output.format"]) == (
        "25000000",
        "0px",
        "auto",
    )
    assert sandbox.admin.total_charged("pixian") == 7


def test_pixian_ai_limits(
    sandbox: RunningSandbox, pixian_ai_client: Any, tmp_path: Path, product_png: bytes
) -> None:
    import inspect

    from pixian_ai import PixianAI

    path = tmp_path / "in.png"
    path.write_bytes(product_png)
    # No test mode: remove_background has no `test` parameter, so every call is billed.
    assert "test" not in inspect.signature(PixianAI.remove_background).parameters
    pixian_ai_client.remove_background(image_path=str(path))
    assert sandbox.admin.total_charged("pixian") == 1
    # Its own check wants percentage margins with a decimal point: "10%" never reaches the server.
    with pytest.raises(ValueError, match="result_margin"):
        pixian_ai_client.remove_background(image_path=str(path), result_margin="10%")
    assert len(sandbox.admin.requests("pixian")) == 1
