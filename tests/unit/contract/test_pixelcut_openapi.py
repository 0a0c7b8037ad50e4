"""Contract test: every request PixelcutHook sends validates against Pixelcut's own OpenAPI documents.

The documents are copies of the vendor's published specs in ``tests/data/openapi/`` (each file names
its source). Requests are captured from the real hook through ``httpx.MockTransport``, so what is
validated is exactly what goes over the wire: method, path, ``X-API-KEY``, ``Accept``, content type
and body.

Two places where openapi-core 0.23 and the documents need help, both explicit below:

* **Multipart text parts.** A multipart body is text parts plus a file. openapi-core decodes
  object-typed properties as JSON (the OpenAPI 3.1 default, our ``image_transform`` encoding) but
  does not cast the text of boolean/number parts, hands the file on as ``bytes`` (which a 3.1
  ``type: string`` rejects), and leaves the *untyped* ``ShadowParameter`` as opaque bytes (so it
  would check nothing). :func:`multipart_loader` therefore casts each part by the spec's own schema
  for that property — ``true``/``false`` for booleans, numbers, JSON text for the shadow object (our
  documented encoding), file parts as text — and openapi-core validates the result.
* **generate-background's JSON schema** requires a property ``image`` that the JSON body does not
  have (VENDORS.md §7 item 2): no JSON request can satisfy it. The test pins that this is the *only*
  complaint against our request, then validates against a copy with ``required: [image_url]``, the
  way remove-background's JSON schema is written.
"""

from __future__ import annotations

import copy
import functools
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.deserializing.media_types.util import data_form_loads
from openapi_core.validation.request.exceptions import (
    InvalidRequestBody,
    RequestBodyValidationError,
    SecurityValidationError,
)
from PIL import Image
from werkzeug.datastructures import Headers, ImmutableMultiDict

from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutOptions, PixelcutShadow
from tests.support.connections import SleepRecorder, set_connection

SPECS = Path(__file__).resolve().parents[2] / "data" / "openapi"
IMAGES = Path(__file__).resolve().parents[2] / "data" / "images"
KEY = "sk_contract_test_key_0001"


def load_spec(name: str) -> dict[str, Any]:
    return yaml.safe_load((SPECS / f"{name}.yaml").read_text())


def resolve(spec: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local ``$ref``."""
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def multipart_loader(spec: Mapping[str, Any]) -> Callable[..., Mapping[str, Any]]:
    """A multipart/form-data deserializer that casts text parts by the spec's property schemas."""
    properties: dict[str, Mapping[str, Any]] = {}
    for path_item in spec["paths"].values():
        for operation in path_item.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "multipart/form-data" in content:
                for name, schema in content["multipart/form-data"]["schema"]["properties"].items():
                    properties[name] = resolve(spec, schema)

    def cast(name: str, raw: bytes) -> Any:
        schema = properties.get(name, {})
        kind = schema.get("type")
        if kind == "string" and schema.get("format") == "binary":
            return raw.decode("latin-1")  # a 3.1 `type: string` cannot accept Python bytes
        if kind == "boolean":
            text = raw.decode()
            return {"true": True, "false": False}.get(text, text)  # anything else fails validation
        if kind in ("number", "integer"):
            try:
                return json.loads(raw)
            except ValueError:
                return raw.decode()
        if kind is None and "properties" in schema:
            return json.loads(raw)  # untyped object (shadow): our JSON-text encoding
        return raw  # strings (text/plain) and typed objects (application/json): openapi-core decodes

    def loads(value: bytes, **parameters: str) -> Mapping[str, Any]:
        parts = data_form_loads(value, **parameters)
        return ImmutableMultiDict([(name, cast(name, raw)) for name, raw in parts.items(multi=True)])

    return loads


def openapi(spec: dict[str, Any]) -> OpenAPI:
    config = Config(extra_media_type_deserializers={"multipart/form-data": multipart_loader(spec)})
    return OpenAPI.from_dict(spec, config=config)


@functools.cache
def published(name: str) -> OpenAPI:
    """The validator of one spec copy, as published (built once: spec validation is slow)."""
    return openapi(load_spec(name))


class HttpxOpenAPIRequest:
    """openapi-core's request protocol over a sent ``httpx.Request``."""

    def __init__(self, request: httpx.Request) -> None:
        self.host_url = f"{request.url.scheme}://{request.url.netloc.decode()}"
        self.path = request.url.path
        self.method = request.method.lower()
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(request.url.params.multi_items())),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )
        self.content_type = request.headers.get("content-type", "")
        self.body = request.read() or None


def tiny(fmt: str, mode: str) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (64, 64), (1, 2, 3, 255) if mode == "RGBA" else (1, 2, 3)).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> tuple[PixelcutHook, list[httpx.Request]]:
    """A hook whose every request is captured; replies are valid so each call completes."""
    set_connection(monkeypatch, "pixelcut_default", "pixelcut", password=KEY)
    captured: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host != "api.developer.pixelcut.ai":
            return httpx.Response(200, content=tiny("PNG", "RGBA"))
        captured.append(request)
        if request.url.path == "/v1/credits":
            return httpx.Response(200, json={"credits_remaining": "42"})
        if request.headers["accept"] == "application/json":
            return httpx.Response(200, json={"result_url": "https://assets.pixelcut.app/public/result/x.png"})
        if request.url.path == "/v1/generate-background":
            return httpx.Response(200, content=tiny("JPEG", "RGB"), headers={"content-type": "image/jpeg"})
        return httpx.Response(200, content=tiny("PNG", "RGBA"), headers={"content-type": "image/png"})

    transport = httpx.MockTransport(handler)
    hook = PixelcutHook(transport=transport, async_transport=transport, sleep=SleepRecorder())
    return hook, captured


PHOTO = (IMAGES / "chelsea.png").read_bytes()
URL = "https://cdn.example/product.jpg"

REMOVE_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "crop": {"options": RemovalOptions.create(crop=True)},
    "shadow-crop-margins": {
        "options": RemovalOptions.create(crop=True, output_format="webp"),
        "vendor_options": PixelcutOptions(
            shadow=PixelcutShadow(opacity=1, light_size=0, x=1, y=-1, z=2),
            margin="49%",
            margin_left="0px",
            margin_right="12px",
            margin_top="1%",
            margin_bottom="0%",
        ),
    },
    "shadow-true-url-delivery": {"vendor_options": {"shadow": True, "result_delivery": "url"}},
    "shadow-automatic-with-opacity": {"vendor_options": {"shadow": {"opacity": 0.3}}},
    "local-crop-margin-colour": {
        "options": RemovalOptions.create(crop=True, margin="5%", background_color="red")
    },
}


@pytest.mark.parametrize("case", REMOVE_CASES, ids=list(REMOVE_CASES))
@pytest.mark.parametrize("by", ["upload", "url"])
def test_remove_background_requests_validate(sent, case, by):
    hook, captured = sent
    source = {"image": PHOTO} if by == "upload" else {"image_url": URL}
    hook.remove_background(**source, **REMOVE_CASES[case])
    (request,) = captured
    expected = "multipart/form-data" if by == "upload" else "application/json"
    assert request.headers["content-type"].startswith(expected)
    published("pixelcut-remove-background").validate_request(HttpxOpenAPIRequest(request))


GENERATE_CASES: dict[str, dict[str, Any]] = {
    "none": {},
    "scene": {"scene": "industrial"},
    "prompts-transform": {
        "prompt": "a sunlit kitchen counter",
        "negative_prompt": "people, text, watermark",
        "image_transform": {"scale": 0.6, "x_center": 0, "y_center": 1},
    },
    "scene-transform-url-delivery": {
        "scene": "linen",
        "image_transform": {"x_center": 0.4},
        "result_delivery": "url",
    },
}


@pytest.mark.parametrize("case", GENERATE_CASES, ids=list(GENERATE_CASES))
def test_generate_background_multipart_requests_validate(sent, case):
    hook, captured = sent
    hook.generate_background(PHOTO, **GENERATE_CASES[case])
    (request,) = captured
    assert request.headers["content-type"].startswith("multipart/form-data")
    published("pixelcut-generate-background").validate_request(HttpxOpenAPIRequest(request))


@functools.cache
def corrected_generate() -> OpenAPI:
    """The validator of :func:`corrected_generate_spec`."""
    return openapi(corrected_generate_spec())


def corrected_generate_spec() -> dict[str, Any]:
    """generate-background's spec with the JSON schema's ``required: [image]`` read as ``image_url``."""
    spec = copy.deepcopy(load_spec("pixelcut-generate-background"))
    schema = spec["paths"]["/v1/generate-background"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert schema["required"] == ["image"]
    assert "image" not in schema["properties"]
    schema["required"] = ["image_url"]
    return spec


@pytest.mark.parametrize("case", GENERATE_CASES, ids=list(GENERATE_CASES))
def test_generate_background_json_requests(sent, case):
    hook, captured = sent
    hook.generate_background(image_url=URL, **GENERATE_CASES[case])
    (request,) = captured
    assert request.headers["content-type"] == "application/json"
    # As published, the JSON schema cannot be met by any request; the missing `image` must be the
    # only complaint against ours ...
    with pytest.raises(InvalidRequestBody) as info:
        published("pixelcut-generate-background").validate_request(HttpxOpenAPIRequest(request))
    errors = [error.message for error in info.value.__cause__.schema_errors]
    assert errors == ["'image' is a required property"]
    # ... and with the contradiction resolved the way remove-background's schema reads, it validates.
    corrected_generate().validate_request(HttpxOpenAPIRequest(request))


async def test_async_requests_validate_too(sent):
    hook, captured = sent
    await hook.aremove_background(PHOTO, vendor_options={"shadow": True})
    await hook.agenerate_background(PHOTO, scene="wood", image_transform={"scale": 2})
    await hook.aget_balance()
    remove, generate, credits = captured
    published("pixelcut-remove-background").validate_request(HttpxOpenAPIRequest(remove))
    published("pixelcut-generate-background").validate_request(HttpxOpenAPIRequest(generate))
    published("pixelcut-get-credits").validate_request(HttpxOpenAPIRequest(credits))


def test_credits_request_validates(sent):
    hook, captured = sent
    assert hook.get_balance().remaining == 42
    (request,) = captured
    assert request.method == "GET"
    published("pixelcut-get-credits").validate_request(HttpxOpenAPIRequest(request))


# -- the validator is not vacuous: requests that break the contract fail ------------------------------


def build(**kwargs: Any) -> HttpxOpenAPIRequest:
    headers = {"X-API-KEY": KEY, **kwargs.pop("headers", {})}
    request = httpx.Client().build_request(
        "POST", "https://api.developer.pixelcut.ai" + kwargs.pop("path"), headers=headers, **kwargs
    )
    return HttpxOpenAPIRequest(request)


IMAGE_FILE = {"image": ("a.png", PHOTO, "image/png")}


@pytest.mark.parametrize(
    ("spec", "request_kwargs"),
    [
        ("remove", {"json": {"format": "png"}}),  # no image_url
        ("remove", {"json": {"image_url": URL, "format": "jpeg"}}),
        ("remove", {"json": {"image_url": URL, "shadow": {"opacity": 0.5}}}),  # enabled is required
        ("remove", {"data": {"crop": "maybe"}, "files": IMAGE_FILE}),
        ("remove", {"data": {"shadow": '{"enabled":true,"opacity":5}'}, "files": IMAGE_FILE}),
        ("remove", {"data": {"shadow": '{"enabled":true,"light_source":{"size":0.3}}'}, "files": IMAGE_FILE}),
        ("generate", {"data": {"scene": "beach"}, "files": IMAGE_FILE}),
        ("generate", {"data": {"image_transform": '{"scale":"big"}'}, "files": IMAGE_FILE}),
    ],
)
def test_contract_violations_are_caught(spec, request_kwargs):
    path = "/v1/remove-background" if spec == "remove" else "/v1/generate-background"
    document = published("pixelcut-remove-background") if spec == "remove" else corrected_generate()
    with pytest.raises(InvalidRequestBody):
        document.validate_request(build(path=path, **request_kwargs))


def test_shadow_that_is_not_json_text_is_caught():
    # (A bare `true` passes: ShadowParameter has no `type`, and its prose says "Pass `true` for
    # automatic shadow estimation" — which is what PixelcutShadow() sends.)
    request = build(path="/v1/remove-background", data={"shadow": "enabled"}, files=IMAGE_FILE)
    with pytest.raises(RequestBodyValidationError):
        published("pixelcut-remove-background").validate_request(request)


def test_missing_api_key_is_caught():
    request = HttpxOpenAPIRequest(
        httpx.Client().build_request("GET", "https://api.developer.pixelcut.ai/v1/credits")
    )
    with pytest.raises(SecurityValidationError):
        published("pixelcut-get-credits").validate_request(request)


def test_the_generate_schema_contradiction_is_documented() -> None:
    # The published contradiction ...
    schema = load_spec("pixelcut-generate-background")["paths"]["/v1/generate-background"]["post"][
        "requestBody"
    ]["content"]["application/json"]["schema"]
    assert schema["required"] == ["image"]
    assert "image" not in schema["properties"]
    assert "image_url" in schema["properties"]
    # ... is stated on the Pixelcut page, with what the client sends instead.
    page = " ".join(
        (Path(__file__).resolve().parents[3] / "docs" / "vendors" / "pixelcut.md").read_text().split()
    )
    assert "generate-background's JSON schema contradicts itself" in page
    assert "`required: [image]`" in page
    assert "there is no `image` property" in page
    assert "(`required: [image_url]`)" in page
    assert '`{"image_url": "…", …options}`' in page
