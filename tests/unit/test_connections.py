"""The three connection types, supplied the ways users supply them (``AIRFLOW_CONN_*`` URI and JSON).

Each case goes from the environment variable to the first HTTP request on the wire: base URL,
authentication, timeout and extras. The vendors' own endpoints are tested in ``tests/unit/vendors``.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from unittest import mock

import httpx
import pytest
from airflow.sdk import BaseHook

from airflow_provider_bgremoval.exceptions import InvalidOptionError, VendorAuthError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.hooks.pixian import PixianHook
from airflow_provider_bgremoval.hooks.poof import PoofHook
from tests.support.connections import SleepRecorder, set_connection

pytestmark = pytest.mark.compat

KEY = "sk_conn_test_SECRET_9876543210"
PIXIAN_ID = "px_test_id_123"
HOOKS: dict[str, type[BackgroundRemovalHook[Any]]] = {
    "pixelcut": PixelcutHook,
    "pixian": PixianHook,
    "poof": PoofHook,
}


def _login(conn_type: str) -> str:
    return PIXIAN_ID if conn_type == "pixian" else ""


class Recorder:
    """Answers every request with 401 and keeps it."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "bad credentials"}})


def _hook(
    cls: type[BackgroundRemovalHook[Any]], recorder: Recorder, **kwargs: Any
) -> BackgroundRemovalHook[Any]:
    transport = httpx.MockTransport(recorder)
    sleep = SleepRecorder()
    return cls(
        transport=transport, async_transport=transport, sleep=sleep, async_sleep=sleep.asleep, **kwargs
    )


def _assert_authenticated(conn_type: str, request: httpx.Request) -> None:
    if conn_type == "pixian":
        expected = base64.b64encode(f"{PIXIAN_ID}:{KEY}".encode()).decode()
        assert request.headers["authorization"] == f"Basic {expected}"
    else:
        assert request.headers["x-api-key"] == KEY


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
@pytest.mark.parametrize(
    ("suffix", "base_url"),
    [
        ("127.0.0.1:8080", "https://127.0.0.1:8080"),
        ("/?base_url=http%3A%2F%2F127.0.0.1%3A9", "http://127.0.0.1:9"),
        ("http%3A%2F%2F127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_uri_connection(conn_type: str, suffix: str, base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"{conn_type}://{_login(conn_type)}:{KEY}@{suffix}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_type.upper()}_DEFAULT", uri)
    recorder = Recorder()
    hook = _hook(HOOKS[conn_type], recorder)
    assert hook.conn_id == f"{conn_type}_default"
    settings = hook.get_settings()
    assert settings.base_url == base_url
    assert settings.api_key == KEY
    assert settings.api_id == (PIXIAN_ID if conn_type == "pixian" else None)
    with hook, pytest.raises(VendorAuthError):
        hook.get_balance()
    assert str(recorder.requests[0].url).startswith(f"{base_url}/")
    _assert_authenticated(conn_type, recorder.requests[0])


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
async def test_json_connection(conn_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch,
        "my_vendor",
        conn_type,
        login=_login(conn_type) or None,
        password=KEY,
        host="http://127.0.0.1",
        port=8765,
        extra={"timeout": 240, "max_retries": 2},
    )
    recorder = Recorder()
    hook = _hook(HOOKS[conn_type], recorder, conn_id="my_vendor")
    settings = await hook.aget_settings()
    assert settings.base_url == "http://127.0.0.1:8765"
    assert settings.timeout == 240.0
    assert hook.retry_policy.max_attempts == 3
    async with hook:
        with pytest.raises(VendorAuthError):
            await hook.aget_balance()
    assert str(recorder.requests[0].url).startswith("http://127.0.0.1:8765/")
    _assert_authenticated(conn_type, recorder.requests[0])


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
def test_defaults_without_host(conn_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch, f"{conn_type}_default", conn_type, login=_login(conn_type) or None, password=KEY
    )
    cls = HOOKS[conn_type]
    settings = _hook(cls, Recorder()).get_settings()
    assert settings.base_url == cls.wire_class.spec.default_base_url
    assert settings.base_url.startswith("https://")
    assert settings.timeout == cls.wire_class.spec.default_timeout


def test_pixian_idle_timeout_is_at_least_180_seconds() -> None:
    assert PixianHook.wire_class.spec.default_timeout >= 180


def test_pixian_test_mode_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_PIXIAN_DEFAULT", f"pixian://{PIXIAN_ID}:{KEY}@/?test_mode=true&timeout=300"
    )
    settings = _hook(PixianHook, Recorder()).get_settings()
    assert str(settings.extras["test_mode"]).lower() == "true"
    assert settings.timeout == 300.0


def test_pixian_without_api_id_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pixian_default", "pixian", password=KEY)
    recorder = Recorder()
    with pytest.raises(InvalidOptionError) as info:
        _hook(PixianHook, recorder).get_balance()
    assert info.value.parameter == "API id"  # the connection form's label of the login field
    assert recorder.requests == []


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
def test_missing_secret_is_a_clear_error(conn_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, f"{conn_type}_default", conn_type, login=_login(conn_type) or None)
    with pytest.raises(InvalidOptionError) as info:
        _hook(HOOKS[conn_type], Recorder()).get_settings()
    label = HOOKS[conn_type].get_ui_field_behaviour()["relabeling"]["password"]  # API key / API secret
    assert info.value.parameter == label
    assert f"set the {label} field" in str(info.value)


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
def test_secret_is_masked_and_never_shown(
    conn_type: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    set_connection(
        monkeypatch, f"{conn_type}_default", conn_type, login=_login(conn_type) or None, password=KEY
    )
    hook = _hook(HOOKS[conn_type], Recorder())
    with mock.patch("airflow_provider_bgremoval.hooks.base.mask_secret") as masked:
        settings = hook.get_settings()
    masked.assert_any_call(KEY)
    ok, message = hook.test_connection()
    assert ok is False
    with pytest.raises(VendorAuthError) as info:
        hook.get_balance()
    for text in (
        repr(hook),
        repr(settings),
        message,
        str(info.value),
        json.dumps(info.value.as_dict()),
        caplog.text,
    ):
        assert KEY not in text


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
def test_extras_the_form_does_not_declare_are_named_in_a_warning(
    conn_type: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_connection(
        monkeypatch,
        f"{conn_type}_default",
        conn_type,
        login=_login(conn_type) or None,
        password=KEY,
        extra={"timeout": 30, "max_retries": 1, "proxy": "http://p:3128", "retries": 9},
    )
    settings = _hook(HOOKS[conn_type], Recorder()).get_settings()
    assert settings.timeout == 30.0
    assert "extras ['proxy', 'retries'] are not fields of its form; ignored" in caplog.text


@pytest.mark.parametrize("conn_type", sorted(HOOKS))
async def test_get_hook_builds_the_right_hook(conn_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's mechanism (provider info ``connection-types`` -> hook class), hook kwargs included."""
    monkeypatch.setenv("AIRFLOW_CONN_SOME_VENDOR", f"{conn_type}://{_login(conn_type)}:{KEY}@127.0.0.1:9")
    hook = BackgroundRemovalHook.get_hook("some_vendor", hook_params={"timeout": 7})
    assert type(hook) is HOOKS[conn_type]
    assert hook.conn_id == "some_vendor"
    assert hook.get_settings().timeout == 7.0
    assert type(await BackgroundRemovalHook.aget_hook("some_vendor")) is HOOKS[conn_type]
    assert type(BaseHook.get_connection("some_vendor").get_hook()) is HOOKS[conn_type]


def test_get_hook_refuses_other_connection_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SOME_DB", "postgres://user:pw@db:5432/x")
    with pytest.raises(InvalidOptionError, match="not a background-removal vendor"):
        BackgroundRemovalHook.get_hook("some_db")


# -- secrets and Airflow's supervisor log (dag.test() at DEBUG) ------------------------------------
class _RecordingLogger:
    """Stands in for a supervisor's structlog logger: keeps every call's event and key-values."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def debug(self, event: str, **values: Any) -> None:
        self.calls.append((event, values))

    def error(self, event: str, **values: Any) -> None:
        self.calls.append((event, values))

    @property
    def text(self) -> str:
        return repr(self.calls)


def _in_process_comms(logger: _RecordingLogger) -> Any:
    """dag.test()'s comms object, with a supervisor that answers every request with nothing."""
    from airflow.sdk.execution_time.supervisor import InProcessSupervisorComms

    supervisor = mock.Mock()
    comms = InProcessSupervisorComms(supervisor=supervisor, log=logger)
    supervisor._handle_request.side_effect = lambda msg, log, req_id: comms.messages.append(None)
    return comms


def test_in_process_supervisor_logs_mask_secret_values_in_clear_upstream() -> None:
    """
    The Airflow defect the shim works around: ``InProcessSupervisorComms.send`` logs the request
    body, so the task SDK's own ``mask_secret`` puts the value in dag.test()'s DEBUG log.
    """
    from airflow.sdk.execution_time.supervisor import set_supervisor_comms
    from airflow.sdk.log import mask_secret

    logger = _RecordingLogger()
    with set_supervisor_comms(_in_process_comms(logger)):
        mask_secret("sk_upstream_leak_SECRET_1357")
    assert "sk_upstream_leak_SECRET_1357" in logger.text  # fixed upstream when this fails


def test_provider_masking_keeps_values_out_of_the_in_process_supervisor_log() -> None:
    from airflow.sdk._shared.secrets_masker import redact
    from airflow.sdk.execution_time.supervisor import set_supervisor_comms

    from airflow_provider_bgremoval import _compat

    logger = _RecordingLogger()
    comms = _in_process_comms(logger)
    with set_supervisor_comms(comms):
        _compat.mask_secret(KEY)
        _compat.mask_secret(KEY + "_2")  # the logger is wrapped once, not once per call
    events = [event for event, _ in logger.calls]
    assert events == ["Sending request", "Sending request"]
    assert all(values["msg"].__name__ == "MaskSecret" for _, values in logger.calls)
    assert KEY not in logger.text
    assert type(comms.log).__name__ == "_SecretBodyOmittingLogger" and comms.log._inner is logger
    assert redact(f"key={KEY}") == "key=***"  # still registered with the masker


def test_connection_fetch_keeps_secrets_out_of_the_in_process_supervisor_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Airflow masks the password and extras as a hook reads the connection: through the shim too."""
    from airflow.sdk.execution_time.supervisor import set_supervisor_comms

    set_connection(monkeypatch, "pixian_default", "pixian", login=PIXIAN_ID, password=KEY)
    basic_token = base64.b64encode(f"{PIXIAN_ID}:{KEY}".encode()).decode()
    logger = _RecordingLogger()
    with set_supervisor_comms(_in_process_comms(logger)):
        PixianHook().get_settings()
        BackgroundRemovalHook.get_hook("pixian_default")
    assert len(logger.calls) >= 4  # password, extras, API key, Basic token
    assert KEY not in logger.text and basic_token not in logger.text


def test_outside_dag_test_comms_are_left_alone() -> None:
    """In a worker the comms object is the socket decoder; the real supervisor omits the bodies."""
    from airflow.sdk.execution_time.supervisor import set_supervisor_comms

    from airflow_provider_bgremoval import _compat

    comms = mock.Mock()
    with set_supervisor_comms(comms):
        _compat.mask_secret(KEY)
    comms.send.assert_called_once()
    assert not isinstance(comms.log, _compat._SecretBodyOmittingLogger)


def test_real_supervisor_logs_mask_secret_requests_without_the_value() -> None:
    """What a worker's supervisor (``ActivitySubprocess``) logs for the same request, at DEBUG."""
    from airflow.sdk.execution_time.comms import MaskSecret
    from airflow.sdk.execution_time.supervisor import ActivitySubprocess

    logger = _RecordingLogger()
    supervisor = mock.Mock()
    ActivitySubprocess._handle_request(supervisor, MaskSecret(value=KEY), logger, 0)  # type: ignore[arg-type]
    assert logger.calls == [("Received message from task runner (body omitted)", {"msg": MaskSecret})]
