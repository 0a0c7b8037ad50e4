"""Three fake vendor balance endpoints behind one httpx.MockTransport, for the credit tests.

``vendors`` defines ``pixelcut_default``, ``pixian_default`` and ``poof_default`` connections and
replaces the hook factories used by the sensor, the trigger and the operators with ones that inject
the mock transport and a time-travel sleep, so every hook (sync and async) talks to the fake. ``sb``
gives the session sandbox with ``sb_pixelcut``/``sb_pixian``/``sb_poof`` connections. A test folder
uses them by importing the fixtures into its ``conftest.py``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image

from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.sandbox import RunningSandbox
from tests.support.connections import SleepRecorder, set_connection

PIXELCUT_KEY = "sk_unit_pixelcut_secret_0123456789"
PIXIAN_ID = "px_unit_id"
PIXIAN_SECRET = "px_unit_secret_0123456789abcdef"
POOF_KEY = "pk_unit_poof_secret_0123456789"
SECRETS = (PIXELCUT_KEY, PIXIAN_SECRET, POOF_KEY)

PATHS = {"/v1/credits": "pixelcut", "/api/v2/account": "pixian", "/v1/me": "poof"}


@dataclass
class FakeVendors:
    """
    Balance endpoints of the three vendors. ``bodies[vendor]`` is the JSON reply; ``script[vendor]``
    is a queue of statuses (or callables returning a response) served before the body.
    """

    bodies: dict[str, Any] = field(
        default_factory=lambda: {
            "pixelcut": {"credits_remaining": 100},
            "pixian": {"credits": 100, "state": "active", "creditPack": "pack_500"},
            "poof": {"maxCredits": 2000, "usedCredits": 1900, "plan": "Pro"},
        }
    )
    script: dict[str, list[int]] = field(default_factory=lambda: {"pixelcut": [], "pixian": [], "poof": []})
    requests: list[httpx.Request] = field(default_factory=list)
    on_request: Callable[[str, int], None] | None = None
    billed: int = 0
    calculated: str = "0.75"

    def set_pixelcut(self, credits: Any) -> None:
        self.bodies["pixelcut"] = {"credits_remaining": credits}

    def set_pixian(self, credits: Any, state: str = "active") -> None:
        self.bodies["pixian"] = {"credits": credits, "state": state, "creditPack": "pack_500"}

    def set_poof(self, max_credits: int, used: int) -> None:
        self.bodies["poof"] = {"maxCredits": max_credits, "usedCredits": used, "plan": "Pro"}

    def calls(self, vendor: str) -> int:
        return sum(1 for r in self.requests if PATHS.get(r.url.path) == vendor)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/api/v2/remove-background":
            return self.pixian_cutout(request)
        vendor = PATHS.get(request.url.path)
        if vendor is None:
            return httpx.Response(404, json={"error": "not found"})
        if self.on_request is not None:
            self.on_request(vendor, self.calls(vendor))
        if self.script[vendor]:
            status = self.script[vendor].pop(0)
            return _error(vendor, status)
        return httpx.Response(200, json=self.bodies[vendor])

    def pixian_cutout(self, request: httpx.Request) -> httpx.Response:
        """A Pixian cut-out; a ``test=true`` call is free and reports ``X-Credits-Calculated``."""
        test = b'name="test"\r\n\r\ntrue' in request.content
        self.billed += 0 if test else 1
        image = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
        image.paste((200, 30, 40, 255), (16, 12, 48, 36))
        out = io.BytesIO()
        image.save(out, format="PNG")
        headers = {"content-type": "image/png", "x-credits-charged": "0" if test else "1"}
        if test:
            headers["x-credits-calculated"] = self.calculated
        return httpx.Response(200, content=out.getvalue(), headers=headers)


def _error(vendor: str, status: int) -> httpx.Response:
    if vendor == "pixelcut":
        code = {401: "invalid_api_key", 403: "invalid_api_key"}.get(status, "internal_error")
        return httpx.Response(status, json={"error": "nope", "error_code": code})
    if vendor == "pixian":
        return httpx.Response(status, json={"error": {"status": status, "code": status, "message": "nope"}})
    code = {401: "authentication_error"}.get(status, "internal_error")
    return httpx.Response(status, json={"code": code, "message": "nope", "request_id": "r1"})


@pytest.fixture
def sleeper() -> SleepRecorder:
    """Records retry waits instead of sleeping."""
    return SleepRecorder()


@pytest.fixture
def vendors(monkeypatch: pytest.MonkeyPatch, sleeper: SleepRecorder) -> FakeVendors:
    """The fake vendors, their default connections, and hook factories bound to them."""
    fake = FakeVendors()
    set_connection(monkeypatch, "pixelcut_default", "pixelcut", password=PIXELCUT_KEY)
    set_connection(monkeypatch, "pixian_default", "pixian", login=PIXIAN_ID, password=PIXIAN_SECRET)
    set_connection(monkeypatch, "poof_default", "poof", password=POOF_KEY)

    def kwargs() -> dict[str, Any]:
        transport = httpx.MockTransport(fake.handler)
        return {
            "transport": transport,
            "async_transport": transport,
            "sleep": sleeper,
            "async_sleep": sleeper.asleep,
        }

    real_get, real_aget = BackgroundRemovalHook.get_hook, BackgroundRemovalHook.aget_hook

    def get_hook(conn_id: str, hook_params: dict[str, Any] | None = None) -> BackgroundRemovalHook[Any]:
        return real_get(conn_id, {**kwargs(), **(hook_params or {})})

    async def aget_hook(
        conn_id: str, hook_params: dict[str, Any] | None = None
    ) -> BackgroundRemovalHook[Any]:
        return await real_aget(conn_id, {**kwargs(), **(hook_params or {})})

    # Every caller (operators, sensor, trigger) finds its hook through these two class methods.
    monkeypatch.setattr(BackgroundRemovalHook, "get_hook", staticmethod(get_hook))
    monkeypatch.setattr(BackgroundRemovalHook, "aget_hook", staticmethod(aget_hook))
    return fake


@pytest.fixture
def sb(sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> RunningSandbox:
    """
    The session sandbox (``tests.support.sandbox``) reset to its start-up state, with
    ``sb_pixelcut``/``sb_pixian``/``sb_poof`` connections.
    """
    sandbox.admin.reset()
    set_connection(monkeypatch, "sb_pixelcut", "pixelcut", password=sandbox.pixelcut_key, host=sandbox.url)
    set_connection(
        monkeypatch,
        "sb_pixian",
        "pixian",
        login=sandbox.pixian_id,
        password=sandbox.pixian_secret,
        host=sandbox.url,
    )
    set_connection(monkeypatch, "sb_poof", "poof", password=sandbox.poof_key, host=sandbox.url)
    return sandbox
