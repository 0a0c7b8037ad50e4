"""Pixelcut contract tests over a real socket (plain httpx, never the provider's hooks)."""

from __future__ import annotations

import email.parser
import email.policy
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from PIL import Image
from sandbox_helpers import SPECS, decode, png_bytes, product_shot
from werkzeug.datastructures import Headers, ImmutableMultiDict

from airflow_provider_bgremoval.sandbox import RunningSandbox

KEY = {"X-API-KEY": "sk_sandbox_pixelcut_key"}
IMG = {"Accept": "image/*", **KEY}

# -- OpenAPI validation (the vendor's own documents, copied into tests/sandbox/specs) ------------


def _load_spec(name: str) -> OpenAPI:
    """Load a Pixelcut spec. openapi-core cannot check raw bytes against OpenAPI 3.1's
    ``format: binary`` strings, so file parts are sent to it as a text placeholder and the
    binary parameter's ``format`` is dropped (in memory only); every other field is validated as is.
    """
    spec = yaml.safe_load((SPECS / name).read_text(encoding="utf-8"))
    RAW_SPEC[str(next(iter(spec["paths"])))] = yaml.safe_load((SPECS / name).read_text(encoding="utf-8"))
    spec["components"]["schemas"]["BinaryImageParameter"].pop("format", None)
    return OpenAPI.from_dict(spec)


RAW_SPEC: dict[str, dict[str, Any]] = {}
SPEC = {
    "/v1/remove-background": _load_spec("pixelcut-remove-background.openapi.yaml"),
    "/v1/generate-background": _load_spec("pixelcut-generate-background.openapi.yaml"),
}
SERVER = "https://api.developer.pixelcut.ai"


def _text_only_multipart(request: httpx.Request) -> httpx.Request:
    """Rebuild a multipart request with file parts replaced by a text placeholder.

    openapi-core cannot validate raw bytes against an OpenAPI 3.1 ``format: binary`` string; every
    other field (names, types, enums) is still validated.
    """
    raw = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.read()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    data = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        is_file = part.get_param("filename", header="content-disposition") is not None
        data[str(name)] = "<binary>" if is_file else part.get_content()
    return httpx.Request(
        request.method, request.url, files=[(k, (None, v.encode())) for k, v in data.items()]
    )


class _Req:
    """openapi-core request protocol over an httpx request (host replaced by the documented one)."""

    def __init__(self, request: httpx.Request) -> None:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            headers = request.headers
            request = _text_only_multipart(request)
            request.headers.update(
                {k: v for k, v in headers.items() if k.lower() not in ("content-type", "content-length")}
            )
        self.host_url = SERVER
        self.path = request.url.path
        self.method = request.method.lower()
        self.body: bytes | None = request.read() or None
        self.content_type = request.headers.get("content-type", "")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(request.url.params.multi_items())),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )


class _Resp:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(list(response.headers.items()))
        self.data: bytes | None = response.content


def validate(response: httpx.Response, request_too: bool = True) -> None:
    """Validate the sandbox's response (and the request the test sent) against the OpenAPI spec."""
    path = response.request.url.path
    spec = SPEC[path]
    req = _Req(response.request)
    if request_too:
        spec.validate_request(req)
    if response.headers.get("content-type", "").startswith("image/"):
        # openapi-core cannot check raw bytes against a 3.1 binary string: check the documented
        # media type range by hand, and that the bytes are the documented image format.
        operation = RAW_SPEC[path]["paths"][path]["post"]
        assert "image/*" in operation["responses"][str(response.status_code)]["content"]
        expected = "PNG" if path == "/v1/remove-background" else "JPEG"
        assert decode(response.content).format == expected
        return
    spec.validate_response(req, _Resp(response))


def remove(
    client: httpx.Client, image: bytes, headers: dict[str, str] | None = None, **data: Any
) -> httpx.Response:
    return client.post(
        "/v1/remove-background",
        headers=headers or IMG,
        files={"image": ("p.png", image, "image/png")},
        data={k: str(v) for k, v in data.items()},
    )


# -- remove-background -------------------------------------------------------------------------


def test_remove_json_default_returns_result_url_serving_png(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    r = remove(client, product_png, headers=KEY)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    validate(r)
    url = r.json()["result_url"]
    assert url.startswith(sandbox.url + "/_results/")
    assert url.endswith(".png")
    img = decode(client.get(url).content)
    assert img.format == "PNG"
    assert img.mode == "RGBA"
    assert img.size == (320, 240)
    assert img.getpixel((2, 2))[3] == 0
    assert img.getpixel((160, 150))[3] == 255
    assert sandbox.admin.total_charged("pixelcut") == 1


def test_remove_accept_image_returns_png_bytes(client: httpx.Client, product_png: bytes) -> None:
    r = remove(client, product_png)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    validate(r)
    assert decode(r.content).mode == "RGBA"


def test_accept_json_explicit_and_wildcard_give_json(client: httpx.Client, product_png: bytes) -> None:
    for accept in ("application/json", "*/*"):
        r = remove(client, product_png, headers={**KEY, "Accept": accept})
        assert r.status_code == 200
        assert "result_url" in r.json()


def test_json_body_with_image_url(client: httpx.Client, product_png: bytes) -> None:
    # The sandbox can fetch loopback URLs: use one of its own result URLs as the input.
    url = remove(client, product_png, headers=KEY).json()["result_url"]
    r = client.post(
        "/v1/remove-background", headers=KEY, json={"image_url": url, "crop": True, "margin": "5px"}
    )
    assert r.status_code == 200, r.text
    validate(r)
    out = decode(client.get(r.json()["result_url"]).content)
    assert out.width < 320
    assert out.height < 240


def test_image_wins_over_image_url(client: httpx.Client, product_png: bytes) -> None:
    r = client.post(
        "/v1/remove-background",
        headers=IMG,
        files={"image": ("p.png", product_png, "image/png")},
        data={"image_url": "http://127.0.0.1:9/unreachable.png"},
    )
    assert r.status_code == 200


def test_crop_and_margins(client: httpx.Client, product_png: bytes) -> None:
    tight = decode(remove(client, product_png, crop="true").content)
    assert tight.width < 320
    assert tight.height < 240
    padded = decode(remove(client, product_png, crop="true", margin="10px", margin_left="20px").content)
    assert padded.size == (tight.width + 30, tight.height + 20)
    pct = decode(remove(client, product_png, crop="true", margin="10%").content)
    assert pct.size == (tight.width + 64, tight.height + 48)  # % of the input's dimensions
    no_crop = decode(remove(client, product_png, margin="10px").content)
    assert no_crop.size == (320, 240)  # margins only apply with crop


@pytest.mark.parametrize(
    "shadow",
    [
        "true",
        json.dumps(
            {
                "enabled": True,
                "opacity": 0.8,
                "light_source": {"size": 0.5, "position": {"x": 0.5, "y": -0.5, "z": 1}},
            }
        ),
    ],
)
def test_shadow_costs_three_more_and_darkens_background(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes, shadow: str
) -> None:
    plain = decode(remove(client, product_png).content)
    shaded = decode(remove(client, product_png, shadow=shadow).content)
    assert sum(shaded.getchannel("A").histogram()[1:]) > sum(plain.getchannel("A").histogram()[1:])
    assert [c["credits"] for c in sandbox.admin.charges("pixelcut")] == [1, 4]


def test_shadow_dotted_multipart_fields(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    r = remove(client, product_png, **{"shadow.enabled": "true", "shadow.opacity": "0.3"})
    assert r.status_code == 200
    assert sandbox.admin.total_charged("pixelcut") == 4


def test_shadow_in_json_body_validates_against_spec(client: httpx.Client, product_png: bytes) -> None:
    url = remove(client, product_png, headers=KEY).json()["result_url"]
    body = {"image_url": url, "shadow": {"enabled": True, "opacity": 0.4}, "format": "png"}
    r = client.post("/v1/remove-background", headers=KEY, json=body)
    assert r.status_code == 200
    validate(r)


DEFAULT_LIGHT = {"size": 0.3, "position": {"x": -0.3, "y": -0.6, "z": 0.7}}


@pytest.mark.parametrize(
    "shadow",
    [True, {"enabled": True}, {"enabled": True, "opacity": 0.5}],
    ids=["true", "object-without-light", "object-with-opacity"],
)
def test_automatic_shadow_estimation_in_json(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes, shadow: Any
) -> None:
    # "Pass `true` for automatic shadow estimation or provide a light source for custom control."
    url = remove(client, product_png, headers=KEY).json()["result_url"]
    body = {"image_url": url, "shadow": shadow}
    automatic = client.post("/v1/remove-background", headers=IMG, json=body)
    assert automatic.status_code == 200
    validate(automatic)
    assert sandbox.admin.charges("pixelcut")[-1]["credits"] == 4
    # The sandbox's estimate is the documented default light (docs/sandbox.md).
    explicit = {"image_url": url, "shadow": {"enabled": True, "light_source": DEFAULT_LIGHT}}
    assert client.post("/v1/remove-background", headers=IMG, json=explicit).content == automatic.content


def test_automatic_shadow_in_multipart(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    as_text = remove(client, product_png, shadow="true")
    as_object = remove(client, product_png, shadow='{"enabled":true,"opacity":0.5}')
    assert as_text.status_code == as_object.status_code == 200
    assert as_text.content == as_object.content
    assert [c["credits"] for c in sandbox.admin.charges("pixelcut")] == [4, 4]


@pytest.mark.parametrize(
    "shadow",
    [
        "true",  # a JSON string, not the boolean the docs mean
        {"opacity": 0.5},  # enabled is required
        {"enabled": "true"},  # enabled is a boolean
        {"enabled": True, "opacity": "0.4"},  # numbers are numbers
        {"enabled": True, "light_source": {"position": DEFAULT_LIGHT["position"]}},  # size is required
        {"enabled": True, "light_source": {"size": 0.3, "position": {"x": 0, "y": 0}}},  # z is required
        {"enabled": True, "light_source": {"size": "0.3", "position": DEFAULT_LIGHT["position"]}},
    ],
)
def test_shadow_in_json_body_is_typed_as_documented(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes, shadow: Any
) -> None:
    url = remove(client, product_png, headers=KEY).json()["result_url"]
    r = client.post("/v1/remove-background", headers=IMG, json={"image_url": url, "shadow": shadow})
    assert (r.status_code, r.json()["error_code"]) == (400, "invalid_parameter")
    validate(r, request_too=False)
    assert sandbox.admin.total_charged() == 1  # the upload that made the URL


@pytest.mark.parametrize(
    "fields",
    [
        {"crop": "true"},  # a JSON string, not the documented boolean
        {"crop": 1},
        {"crop": True, "margin": 5},  # a margin is a string like "5px"
        {"format": ["png"]},
    ],
)
def test_json_body_fields_are_typed_as_documented(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes, fields: dict[str, Any]
) -> None:
    url = remove(client, product_png, headers=KEY).json()["result_url"]
    r = client.post("/v1/remove-background", headers=IMG, json={"image_url": url, **fields})
    assert (r.status_code, r.json()["error_code"]) == (400, "invalid_parameter")
    validate(r, request_too=False)
    assert sandbox.admin.total_charged() == 1  # the upload that made the URL


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"format": "jpg"}, "invalid_parameter"),
        ({"crop": "maybe"}, "invalid_parameter"),
        ({"crop": "true", "margin": "50%"}, "invalid_parameter"),
        ({"crop": "true", "margin_top": "ten"}, "invalid_parameter"),
        ({"shadow": '{"opacity": 0.5}'}, "invalid_parameter"),
        ({"shadow": '{"enabled": true, "opacity": 2}'}, "invalid_parameter"),
        (
            {"shadow": '{"enabled": true, "light_source": {"size": 0.2, "position": {"x": 0, "y": 0}}}'},
            "invalid_parameter",
        ),
    ],
)
def test_invalid_parameters(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes, data: dict[str, str], code: str
) -> None:
    r = remove(client, product_png, **data)
    assert r.status_code == 400
    assert r.json()["error_code"] == code
    assert r.json()["error"]
    validate(r, request_too=False)
    assert sandbox.admin.total_charged() == 0


def test_request_body_errors(client: httpx.Client) -> None:
    r = client.post("/v1/remove-background", headers={**KEY, "Content-Type": "application/json"}, content=b"")
    assert (r.status_code, r.json()["error_code"]) == (400, "invalid_request_body")
    validate(r, request_too=False)
    r = client.post(
        "/v1/remove-background", headers={**KEY, "Content-Type": "application/json"}, content=b"{nope"
    )
    assert r.json()["error_code"] == "invalid_request_body"
    r = client.post("/v1/remove-background", headers={**KEY, "Content-Type": "text/plain"}, content=b"hello")
    assert (r.status_code, r.json()["error_code"]) == (400, "unsupported_content_type")
    r = client.post("/v1/remove-background", headers=KEY, json={"crop": True})
    assert (r.status_code, r.json()["error_code"]) == (400, "missing_parameter")
    r = client.post("/v1/remove-background", headers=KEY, files={"other": ("x", b"x")})
    assert (r.status_code, r.json()["error_code"]) == (400, "missing_parameter")


def test_image_url_failures_are_invalid_parameter(client: httpx.Client, sandbox: RunningSandbox) -> None:
    for url in (
        "http://127.0.0.1:9/nothing.png",
        "ftp://example.com/a.png",
        sandbox.url + "/_results/missing.png",
    ):
        r = client.post("/v1/remove-background", headers=KEY, json={"image_url": url})
        assert (r.status_code, r.json()["error_code"]) == (400, "invalid_parameter"), url


def test_image_errors(client: httpx.Client, blank_png: bytes) -> None:
    cases = [
        (b"this is not an image", "malformed_image"),
        (png_bytes(product_shot(), "GIF"), "unsupported_image_format"),
        (png_bytes(Image.new("RGB", (6001, 64), "white")), "resolution_too_high"),
        (png_bytes(Image.new("RGB", (63, 200), "white")), "invalid_parameter"),
        (blank_png, "unknown_foreground"),
        (b"\x89PNG" + b"\0" * (25 * 1024 * 1024), "file_size_too_large"),
    ]
    for data, code in cases:
        r = remove(client, data)
        assert r.status_code == 400, code
        assert r.json()["error_code"] == code
        validate(r, request_too=False)


def test_25mb_is_25_000_000_bytes(client: httpx.Client, sandbox: RunningSandbox) -> None:
    # "Max size: 25MB" in decimal megabytes, as the client reads it (tests/unit/contract).
    at_limit = b"\x89PNG" + b"\0" * (25_000_000 - 4)
    assert remove(client, at_limit).json()["error_code"] == "malformed_image"  # size accepted
    over = remove(client, at_limit + b"\0")
    assert (over.status_code, over.json()["error_code"]) == (400, "file_size_too_large")
    assert sandbox.admin.total_charged() == 0


def test_auth_errors(client: httpx.Client, product_png: bytes) -> None:
    for headers in ({"Accept": "image/*"}, {"X-API-KEY": "sk_wrong", "Accept": "image/*"}):
        r = remove(client, product_png, headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": "API Token not found", "error_code": "invalid_auth_token"}
        validate(r, request_too=False)
    assert client.get("/v1/credits").status_code == 401
    # header names are case-insensitive (the prose writes X-API-Key)
    assert client.get("/v1/credits", headers={"x-api-key": KEY["X-API-KEY"]}).status_code == 200


def test_insufficient_credits_is_403(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    sandbox.admin.set_balance("pixelcut", 3)
    r = remove(client, product_png, shadow="true")  # costs 4
    assert r.status_code == 403
    assert r.json() == {"error": "Insufficient credits available", "error_code": "insufficient_api_credits"}
    validate(r, request_too=False)
    assert remove(client, product_png).status_code == 200
    assert client.get("/v1/credits", headers=KEY).json() == {"credits_remaining": 2}


def test_credits_number_or_string(client: httpx.Client, sandbox: RunningSandbox) -> None:
    assert client.get("/v1/credits", headers=KEY).json() == {"credits_remaining": 1000}
    sandbox.admin.settings(pixelcut_credits_type="string")
    assert client.get("/v1/credits", headers=KEY).json() == {"credits_remaining": "1000"}
    sandbox.admin.set_balance("pixelcut", "0.00005")
    assert client.get("/v1/credits", headers=KEY).json() == {"credits_remaining": "0.00005"}  # not "5e-05"
    sandbox.admin.set_balance("pixelcut", "12.5")
    assert client.get("/v1/credits", headers=KEY).json() == {"credits_remaining": "12.5"}


def test_rate_limit_429_without_retry_after(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    sandbox.admin.set_faults("pixelcut", fault="rate_limited", next=1)
    r = remove(client, product_png)
    assert r.status_code == 429
    assert "retry-after" not in r.headers
    assert r.json() == {"error": "Too many requests", "error_code": "rate_limit_exceeded"}
    validate(r, request_too=False)
    assert remove(client, product_png).status_code == 200


# -- result URLs ------------------------------------------------------------------------------


def test_result_url_expires_with_the_clock(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    url = remove(client, product_png, headers=KEY).json()["result_url"]
    assert client.get(url).status_code == 200
    sandbox.admin.advance_clock(3599)
    assert client.get(url).status_code == 200
    sandbox.admin.advance_clock(2)
    assert client.get(url).status_code == 404


def test_result_url_short_configured_lifetime(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    sandbox.admin.settings(result_ttl_seconds=0.2)
    url = remove(client, product_png, headers=KEY).json()["result_url"]
    assert client.get(url).status_code == 200
    sandbox.admin.advance_clock(0.25)
    assert client.get(url).status_code == 404


def test_result_url_fault_status(client: httpx.Client, sandbox: RunningSandbox, product_png: bytes) -> None:
    url = remove(client, product_png, headers=KEY).json()["result_url"]
    sandbox.admin.set_faults("pixelcut", result_url_status=410)
    assert client.get(url).status_code == 410
    assert urlsplit(url).path.startswith("/_results/")


def test_public_base_url_setting() -> None:
    from airflow_provider_bgremoval.sandbox import run_sandbox

    with run_sandbox(public_base_url="http://sandbox.example:1234/") as sb:
        r = httpx.post(
            sb.url + "/v1/remove-background",
            headers=KEY,
            files={"image": ("p.png", png_bytes(product_shot()))},
        )
        assert r.json()["result_url"].startswith("http://sandbox.example:1234/_results/")


# -- generate-background ------------------------------------------------------------------------


def generate(
    client: httpx.Client, image: bytes, headers: dict[str, str] | None = None, **data: str
) -> httpx.Response:
    return client.post(
        "/v1/generate-background",
        headers=headers or IMG,
        files={"image": ("p.png", image, "image/png")},
        data=data,
    )


def test_generate_background_scene_is_deterministic_1024_jpeg(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes
) -> None:
    a = generate(client, product_png, scene="marble")
    assert a.status_code == 200
    assert a.headers["content-type"] == "image/jpeg"
    validate(a)
    img = decode(a.content)
    assert img.format == "JPEG"
    assert img.size == (1024, 1024)
    assert generate(client, product_png, scene="marble").content == a.content
    assert generate(client, product_png, scene="brick").content != a.content
    # a scene wins over the prompt
    assert generate(client, product_png, scene="marble", prompt="a beach").content == a.content
    assert sandbox.admin.total_charged("pixelcut") == 4


def test_generate_background_prompt_and_json_mode(client: httpx.Client, product_png: bytes) -> None:
    a = generate(client, product_png, prompt="sunlit kitchen", negative_prompt="people")
    b = generate(client, product_png, prompt="sunlit kitchen", negative_prompt="people")
    c = generate(client, product_png, prompt="dark studio")
    assert a.content == b.content != c.content
    r = generate(client, product_png, headers=KEY, prompt="x")
    validate(r)
    assert r.json()["result_url"].endswith(".jpg")
    assert decode(client.get(r.json()["result_url"]).content).format == "JPEG"


def _subject_center(jpeg: bytes, reference: bytes) -> tuple[float, float]:
    from PIL import ImageChops

    diff = ImageChops.difference(decode(jpeg).convert("L"), decode(reference).convert("L"))
    box = diff.point(lambda v: 255 if v > 60 else 0).getbbox()
    assert box is not None
    return (box[0] + box[2]) / 2048, (box[1] + box[3]) / 2048


def test_generate_background_image_transform(client: httpx.Client, product_png: bytes) -> None:
    blank_scene = generate(
        client, png_bytes(Image.new("RGBA", (200, 200), (0, 0, 0, 0)).copy()), scene="linen"
    )
    # (an all-transparent RGBA input is composited as nothing: the bare scene)
    assert blank_scene.status_code == 200
    moved = generate(
        client,
        product_png,
        scene="linen",
        image_transform=json.dumps({"scale": 0.3, "x_center": 0.25, "y_center": 0.7}),
    )
    assert moved.status_code == 200
    x, y = _subject_center(moved.content, blank_scene.content)
    assert abs(x - 0.25) < 0.06
    assert abs(y - 0.7) < 0.06
    dotted = generate(client, product_png, scene="linen", **{"image_transform.x_center": "0.75"})
    x, _ = _subject_center(dotted.content, blank_scene.content)
    assert abs(x - 0.75) < 0.06


def test_generate_background_rgba_alpha_used_as_is(client: httpx.Client) -> None:
    rgba = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    rgba.paste((0, 200, 0, 255), (100, 100, 200, 200))
    out = decode(generate(client, png_bytes(rgba), scene="wood").content).convert("RGB")
    # scale 1 for RGBA input: the 300 px canvas maps to 1024 px; the square covers the middle third
    r, g, b = out.getpixel((512, 512))
    assert g > 150
    assert r < 80
    assert b < 80
    r, g, b = out.getpixel((200, 200))
    assert not (g > 150 and r < 80 and b < 80)


@pytest.mark.parametrize("scale", ["0.001", "20", "1e6"])
def test_generate_background_scale_has_no_invented_range(
    client: httpx.Client, product_png: bytes, scale: str
) -> None:
    # The docs give image_transform.scale no range (x_center and y_center are 0-1).
    r = generate(client, product_png, scene="linen", image_transform=json.dumps({"scale": float(scale)}))
    assert r.status_code == 200
    assert decode(r.content).size == (1024, 1024)
    validate(r)


def test_generate_background_huge_scale_fills_the_canvas_with_the_subject(client: httpx.Client) -> None:
    rgba = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    rgba.paste((0, 200, 0, 255), (100, 100, 200, 200))
    out = decode(generate(client, png_bytes(rgba), scene="wood", **{"image_transform.scale": "50"}).content)
    # 50 x the canvas: the middle third of the subject (the green square) covers all of it
    for point in ((0, 0), (512, 512), (1023, 1023)):
        r, g, b = out.convert("RGB").getpixel(point)
        assert g > 150 and r < 80 and b < 80, point


@pytest.mark.parametrize(
    "transform",
    [
        {"scale": "0.5"},  # numbers are JSON numbers
        {"x_center": "0.25"},
        {"y_center": True},
        '{"scale": 0.5}',  # an object, not JSON text of one
    ],
)
def test_generate_background_json_body_is_typed_as_documented(
    client: httpx.Client, sandbox: RunningSandbox, product_png: bytes, transform: Any
) -> None:
    url = remove(client, product_png, headers=KEY).json()["result_url"]
    ok = client.post("/v1/generate-background", headers=IMG, json={"image_url": url, "image_transform": {}})
    assert ok.status_code == 200, ok.text
    body = {"image_url": url, "scene": "linen", "image_transform": transform}
    r = client.post("/v1/generate-background", headers=IMG, json=body)
    assert (r.status_code, r.json()["error_code"]) == (400, "invalid_parameter")
    validate(r, request_too=False)
    assert sandbox.admin.total_charged() == 2  # the upload that made the URL, and the good call


@pytest.mark.parametrize(
    "data",
    [
        {"scene": "beach"},
        {"image_transform": '{"x_center": 1.5}'},
        {"image_transform": "nope"},
        {"image_transform.scale": "-1"},
        {"image_transform.scale": "0"},
        {"image_transform.scale": "inf"},
        {"image_transform.scale": "nan"},
    ],
)
def test_generate_background_invalid(client: httpx.Client, product_png: bytes, data: dict[str, str]) -> None:
    r = generate(client, product_png, **data)
    assert (r.status_code, r.json()["error_code"]) == (400, "invalid_parameter")
    validate(r, request_too=False)
