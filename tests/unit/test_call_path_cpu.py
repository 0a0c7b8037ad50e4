"""The client CPU of one vendor call: what the hook path works out once instead of per call (issue 12)."""

from __future__ import annotations

import asyncio
import io
import warnings
from typing import Any

import httpx
import pytest
from PIL import Image

import airflow_provider_bgremoval.options as options_module
from airflow_provider_bgremoval.hooks.poof import PoofHook
from airflow_provider_bgremoval.imaging import InputLimits, apply_local_steps, input_formats, prepare_input
from airflow_provider_bgremoval.options import LocalSteps, RemovalOptions, split_options
from airflow_provider_bgremoval.vendors.poof import POOF_SPEC, PoofOptions
from tests.support.connections import set_connection

GENEROUS = InputLimits(max_bytes=50 * 1024 * 1024)


def _png(mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (48, 32), (200, 40, 40, 255)[: len(mode)]).save(out, format="PNG")
    return out.getvalue()


def test_input_formats_are_worked_out_once_per_set_of_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The readers tried on an input were rebuilt from Pillow's 43 registered ones twice per image; they
    are worked out once for a set of registered readers, and a plugin registered later is still tried.
    """
    first = input_formats()
    assert input_formats() is first
    assert "EPS" not in first

    monkeypatch.setitem(Image.OPEN, "H14TEST", (Image.Image, None))  # a plugin registered later
    assert input_formats() == (*first, "H14TEST")


def test_typed_vendor_options_are_not_validated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typed options object is taken as it is (validated when made): a call coerced it three times."""
    typed = PoofOptions(size="small")

    def refuse(*args: Any) -> Any:
        raise AssertionError("validated again")

    defaults = PoofOptions.coerce(None)
    monkeypatch.setattr(options_module, "validate_as", refuse)
    assert PoofOptions.coerce(typed) is typed
    assert PoofOptions.coerce(None) is defaults  # made once: a call without vendor options made it anew
    assert defaults == PoofOptions()
    with pytest.raises(AssertionError, match="validated again"):  # a mapping is still validated
        PoofOptions.coerce({"size": "small"})


def test_an_option_split_is_worked_out_once() -> None:
    """The split of equal options for equal capabilities is the same (frozen) object, not remade per call."""
    split = split_options(RemovalOptions(crop=True, margin="5%"), POOF_SPEC.capabilities)
    assert split_options(RemovalOptions(crop=True, margin="5%"), POOF_SPEC.capabilities) is split
    assert split.local.crop and split.native.margin is None


def _filter_additions(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    added: list[object] = []
    original = warnings.filterwarnings

    def counting(*args: Any, **kwargs: Any) -> None:
        added.append(kwargs.get("category"))
        original(*args, **kwargs)

    monkeypatch.setattr(warnings, "filterwarnings", counting)
    return added


def test_an_input_check_installs_the_bomb_filter_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The header read and the full decode of an input are one use of the bomb-warning filter: each was
    its own use, so the process-wide filter list was changed (and the warnings caches dropped) twice
    per input, the uses never overlapping on the event loop.
    """
    added = _filter_additions(monkeypatch)
    prepare_input(_png(), GENEROUS, vendor="poof")
    assert added == [Image.DecompressionBombWarning]


def test_a_result_with_local_steps_installs_the_bomb_filter_once(monkeypatch: pytest.MonkeyPatch) -> None:
    added = _filter_additions(monkeypatch)
    apply_local_steps(_png("RGBA"), LocalSteps(crop=True), vendor="poof")
    assert added == [Image.DecompressionBombWarning]


def test_a_call_parses_no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A call parses no URL: the multipart body's throwaway request (encoded once, sent whole) parsed a
    placeholder URL each call, and the client the request's path, then the URL merged from it.
    """
    set_connection(monkeypatch, "poof_default", "poof", password="pk_test_cpu_0123456789")
    result = _png("RGBA")
    hook = PoofHook(
        async_transport=httpx.MockTransport(
            lambda request: httpx.Response(200, headers={"content-type": "image/png"}, content=result)
        )
    )

    async def calls() -> None:
        await hook.aremove_background(_png())  # the connection is read, the client made
        parsed: list[str] = []
        original = httpx._urls.urlparse

        def counting(url: str = "", **kwargs: Any) -> Any:
            parsed.append(url)
            return original(url, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(httpx._urls, "urlparse", counting)
            await hook.aremove_background(_png())
        await hook.aclose()
        assert parsed == []  # the endpoint's URL was parsed by the first call

    asyncio.run(calls())


def _slow_poof(monkeypatch: pytest.MonkeyPatch, reply_after: asyncio.Event | None = None) -> PoofHook:
    """A Poof hook whose replies come after a pass of the event loop (or once ``reply_after`` is set)."""
    set_connection(monkeypatch, "poof_default", "poof", password="pk_test_cpu_0123456789")
    result = _png("RGBA")

    async def reply(request: httpx.Request) -> httpx.Response:
        await (reply_after.wait() if reply_after is not None else asyncio.sleep(0.01))
        return httpx.Response(200, headers={"content-type": "image/png"}, content=result)

    return PoofHook(async_transport=httpx.MockTransport(reply))


def test_overlapping_calls_install_the_bomb_filter_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Calls in flight at once share one use of the bomb-warning filter: it is added by the first and
    removed by the last, not added and removed for each Pillow step of each image (their uses never
    overlapped on the event loop), and each change reset every module's warnings registry (a warning
    shown once was shown again after each image).
    """
    hook = _slow_poof(monkeypatch)

    async def calls() -> None:
        await hook.aremove_background(_png())  # the connection is read, the client made
        added = _filter_additions(monkeypatch)
        await asyncio.gather(*(hook.aremove_background(_png()) for _ in range(8)))
        await hook.aclose()
        assert added == [Image.DecompressionBombWarning]

    before = list(warnings.filters)
    asyncio.run(calls())
    assert warnings.filters == before


def test_a_cancelled_call_gives_the_bomb_filter_back_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A call cancelled while it is out ends its use of the filter then: the cancellation unwinds the
    driver, whose flow is closed with it (the filter is never left installed by an abandoned call).
    """
    before = list(warnings.filters)

    async def cancelled() -> None:
        hook = _slow_poof(monkeypatch, reply_after=asyncio.Event())  # never set: the reply never comes
        call = asyncio.ensure_future(hook.aremove_background(_png()))
        while warnings.filters == before:  # the call is out, holding the filter
            await asyncio.sleep(0.001)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert warnings.filters == before
        await hook.aclose()

    asyncio.run(cancelled())


def test_the_retry_policy_is_worked_out_as_the_connection_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``max_retries`` extra was parsed, and the policy copied, on every call."""
    set_connection(
        monkeypatch, "poof_default", "poof", password="pk_test_cpu_0123456789", extra={"max_retries": 2}
    )
    hook = PoofHook()
    assert hook.retry_policy == POOF_SPEC.retry_policy  # before the connection is read: the vendor's
    hook.get_settings()
    policy = hook.retry_policy
    assert policy.max_attempts == 3
    assert hook.retry_policy is policy


def test_a_poof_reply_has_its_headers_read_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of the ~10 headers a Poof reply is read for was a scan of every header of the reply."""
    from airflow_provider_bgremoval.vendors.base import ConnectionSettings
    from airflow_provider_bgremoval.vendors.poof import PoofWire

    reply = httpx.Response(
        200,
        headers={"content-type": "image/png", "x-request-id": "req-1", "x-image-width": "48", "x-width": "9"},
        content=_png("RGBA"),
    )
    wire = PoofWire(ConnectionSettings(base_url="http://poof.test", api_key="pk_test_cpu_0123456789"))
    lookups: list[str] = []
    original = httpx.Headers.__getitem__

    def counting(self: httpx.Headers, key: str) -> str:
        lookups.append(key)
        return original(self, key)

    monkeypatch.setattr(httpx.Headers, "__getitem__", counting)
    result = wire.parse_image_reply(reply)
    assert (result.request_id, result.width, result.metadata["output_width"]) == ("req-1", 48, 48)
    assert lookups == ["content-type"]  # the media type (VendorWire's helper); the rest from one pass
