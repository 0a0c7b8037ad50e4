"""Representative cells through real Airflow (``dag.test()``), and the security cells.

The operator adds the verdict (task state, exception class, message), the manifest upload and the
XCom summary on top of the engine: these cells check that layer under faults, and scan everything a
run produced for the API keys.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InvalidOptionError,
    ResultDownloadError,
    VendorAuthError,
)
from airflow_provider_bgremoval.pipeline.manifest import read_manifest
from airflow_provider_bgremoval.pipeline.naming import UnsafeNameError, destination_name
from airflow_provider_bgremoval.vendors.base import basic_auth_header
from tests.faults.conftest import Cell
from tests.faults.matrix import BATCH, check_cell, make_hook, output_objects, run_batch, seed, small_batch
from tests.support.connections import set_connection

pytestmark = pytest.mark.integration

DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    RemoveBackgroundOperator(
        task_id="cutouts",
        conn_id={conn_id!r},
        source_bucket={src!r},
        source_prefix={prefix!r},
        destination_bucket={dst!r},
        destination_prefix="out/",
        max_concurrency=8,
        retries=0,
        {extra}
    )
"""


#: One message each layer logs only at DEBUG, asserted present in the DEBUG scan.
DEBUG_MARKERS = {
    "Airflow's in-process supervisor comms": "Sending request",
    "Airflow's supervisor": "Received message from task runner",
    "Airflow's connection lookup": "Connection Retrieved",
    "httpx (vendor calls)": "HTTP Request: POST",
    "httpcore (vendor calls)": "send_request_headers.started",
    "urllib3 (GCS)": "Starting new HTTP connection",
    "google-auth (GCS)": "Making request",
}
#: A stand-in service-account private key (never used: the emulator needs no credentials). The scan
#: looks for its body, which survives JSON escaping of the PEM's newlines.
GCS_PRIVATE_KEY_BODY = "MIIsecretsScanFakeKeyMaterial0123456789"
GCS_PRIVATE_KEY = f"-----BEGIN PRIVATE KEY-----\n{GCS_PRIVATE_KEY_BODY}\n-----END PRIVATE KEY-----\n"


DIRECT_HOOKS_DAG = """
from airflow.sdk import DAG, task

with DAG("faults_secrets_direct_hooks", schedule=None, catchup=False) as dag:

    @task
    def balances():
        from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
        from airflow_provider_bgremoval.hooks.pixian import PixianHook
        from airflow_provider_bgremoval.hooks.poof import PoofHook

        found = {}
        for hook in (PixianHook(), PixelcutHook(), PoofHook()):
            with hook:
                found[hook.conn_id] = str(hook.get_balance().remaining)
        return found

    balances()
"""


def dag_source(dag_id: str, conn_id: str, src: str, dst: str, prefix: str = "raw/", extra: str = "") -> str:
    return DAG.format(dag_id=dag_id, conn_id=conn_id, src=src, dst=dst, prefix=prefix, extra=extra)


def manifest_rows(cell: Cell, summary: dict) -> list[dict]:
    return read_manifest(cell.storage.read(cell.dst, summary["manifest_uri"].split("/", 3)[3]))


def task_logs(dag_id: str) -> list[Path]:
    """Task log files under AIRFLOW_HOME/logs (``dag.test()`` in 3.3 logs to the console instead)."""
    root = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    return [p for p in root.rglob("*") if p.is_file() and f"dag_id={dag_id}" in str(p)]


#: Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_RECORD_ATTRIBUTES = {*vars(logging.makeLogRecord({})), "message", "asctime"}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            line = f"{record.msg!r} {record.args!r}"
        # ``extra=`` payloads too (google-auth puts request headers and bodies there at DEBUG)
        extras = {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}
        self.lines.append(f"{line} {extras!r}" if extras else line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class _CurrentStdout:
    """A stream writing to whatever ``sys.stdout`` is at the time (pytest swaps it per test)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture
def airflow_log_level(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """
    Airflow's ``[logging] logging_level`` for the test (indirect parameter; ``INFO`` when not given).

    A level other than INFO is set the way users set it, ``AIRFLOW__LOGGING__LOGGING_LEVEL``, and
    Airflow's logging is configured again from it (structlog's filtering level, the stdlib root and
    ``airflow`` loggers); logging is configured once at import, so the variable alone would not take
    effect mid-session. Everything is put back afterwards.
    """
    level = str(getattr(request, "param", "INFO")).upper()
    if level == "INFO":
        yield level
        return
    import structlog
    from airflow import logging_config
    from airflow._shared.logging.structlog import PER_LOGGER_LEVELS

    manager = logging.Logger.manager
    saved_structlog = structlog.get_config()
    saved_levels = dict(PER_LOGGER_LEVELS.items())
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved_loggers = {
        name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    monkeypatch.setenv("AIRFLOW__LOGGING__LOGGING_LEVEL", level)
    logging_config.configure_logging()
    for handler in root.handlers:  # the console handler is bound to the stdout of this moment
        if isinstance(handler, logging.StreamHandler) and handler not in saved_root[1]:
            handler.setStream(_CurrentStdout())  # type: ignore[arg-type]
    logging.getLogger("httpx").setLevel(level)  # Airflow keeps httpx at WARNING; scan it too
    google = logging.getLogger("google")  # google-auth logs only once its base logger is configured
    google.setLevel(level)
    google.propagate = True
    try:
        yield level
    finally:
        structlog.configure(**saved_structlog)
        PER_LOGGER_LEVELS.clear()
        PER_LOGGER_LEVELS.update(saved_levels)
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        for name, logger in manager.loggerDict.items():
            if not isinstance(logger, logging.Logger):
                continue
            if name in saved_loggers:
                logger.level, handlers, logger.propagate, logger.disabled = saved_loggers[name]
                logger.handlers[:] = handlers
            else:
                logger.setLevel(logging.NOTSET)
        manager._clear_cache()


@pytest.fixture
def log_records(airflow_log_level: str) -> Iterator[_Records]:
    """Every log record of the test, at DEBUG (works with ``-p no:logging`` too, unlike caplog)."""
    handler = _Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


# -- operator verdicts under faults ---------------------------------------------------------------
def test_dag_all_calls_5xx_fails_the_task_with_nothing_written(cell: Cell, dag_tester) -> None:
    """100 % 503 through the operator: the task fails, naming the count and the manifest; no output."""
    cell.connections(max_retries=0)  # the real policy's waits are seconds; one attempt per image here
    cell.sandbox.admin.set_faults("pixian", error_rate=1.0, error_statuses=[503])
    run = dag_tester.run(dag_source("faults_5xx", "pixian_default", cell.src, cell.dst), "faults_5xx")
    assert run.state == "failed", run.task_states()
    summary = run.xcom("cutouts", key="summary")
    assert summary["failed"] == BATCH and summary["done"] == 0
    assert output_objects(cell.storage, cell.dst, "out/") == {}
    rows = manifest_rows(cell, summary)
    assert len(rows) == BATCH and all(r["status"] == "failed" and "503" in r["error_message"] for r in rows)
    assert cell.sandbox.admin.total_charged("pixian") == 0


def test_dag_credits_run_out_mid_batch_fails_without_retry(cell: Cell, dag_tester) -> None:
    """Credits run out at image 20 of 50: the task fails for good, the summary says what remains."""
    cell.sandbox.admin.set_faults("poof", latency_ms=30, exhaust_after=20)
    source = dag_source("faults_credits", "poof_default", cell.src, cell.dst)
    run = dag_tester.run(source, "faults_credits")
    assert run.state == "failed"
    summary = run.xcom("cutouts", key="summary")
    assert summary["done"] == 20 and summary["pending"] == BATCH - 20
    assert summary["halt"]["reason"] == "out_of_credits" and summary["halt"]["fatal"] is True
    assert summary["halt"]["remaining_images"] == BATCH - 20
    assert cell.sandbox.admin.total_charged("poof") == 20
    cell.sandbox.admin.set_balance("poof", 1000)
    rerun = dag_tester.run(source, "faults_credits")
    assert rerun.state == "success", rerun.task_states()
    assert rerun.xcom("cutouts")["done"] == BATCH - 20 and rerun.xcom("cutouts")["skipped"] == 20
    assert cell.sandbox.admin.total_charged("poof") == BATCH


def test_dag_empty_prefix_is_nothing_to_do(cell: Cell, dag_tester, capfd, log_records) -> None:
    """An empty prefix succeeds with a 'Nothing to do' log line and an empty manifest."""
    run = dag_tester.run(
        dag_source("faults_empty", "poof_default", cell.src, cell.dst, "none/"), "faults_empty"
    )
    assert run.state == "success", run.task_states()
    summary = run.xcom("cutouts")
    assert summary["total"] == 0 and summary["credits_spent"] == "0"
    out, err = capfd.readouterr()
    assert "Nothing to do" in log_records.text + out + err
    assert cell.sandbox.admin.requests("poof") == []


def test_dag_templated_bad_parameter_fails_at_task_start(cell: Cell, dag_tester, capfd, log_records) -> None:
    """A templated colour that renders to garbage fails the task before any call, naming the parameter."""
    run = dag_tester.run(
        dag_source(
            "faults_badparam",
            "poof_default",
            cell.src,
            cell.dst,
            extra="background_color=\"{{ 'not-a-colour' }}\",",
        ),
        "faults_badparam",
    )
    assert run.state == "failed"
    assert cell.sandbox.admin.requests("poof") == []
    out, err = capfd.readouterr()
    assert "invalid 'background_color'" in log_records.text + out + err


# -- secrets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("airflow_log_level", ["INFO", "DEBUG"], indirect=True)
def test_secrets_never_leak_anywhere(
    cell: Cell, dag_tester, capfd, log_records, airflow_log_level: str
) -> None:
    """
    Run real DAGs for every vendor — successes, local rejects, vendor errors, an auth revocation —
    then scan the task logs, captured logs, manifests, XComs and every exception's str/repr for the
    API keys, the Pixian secret and its derived ``Basic …`` token; at INFO and again at DEBUG, where
    Airflow's supervisor, httpx/httpcore and the GCS stack (urllib3, google-auth) log the most.
    """
    sandbox = cell.sandbox
    pixian_basic = basic_auth_header(sandbox.pixian_id, sandbox.pixian_secret)
    secrets = {
        "Pixelcut API key": sandbox.pixelcut_key,
        "Pixian API secret": sandbox.pixian_secret,
        "Pixian Basic token": pixian_basic.partition(" ")[2],
        "Poof API key": sandbox.poof_key,
        "GCS service-account private key": GCS_PRIVATE_KEY_BODY,
    }
    # The storage layer reads google_cloud_default (only its project, under the emulator): give it
    # key material, which Airflow masks as it fetches the connection.
    keyfile = {"type": "service_account", "project_id": "secrets-scan", "private_key": GCS_PRIVATE_KEY}
    set_connection(
        cell.monkeypatch,
        "google_cloud_default",
        "google_cloud_platform",
        extra={"project": "secrets-scan", "keyfile_dict": json.dumps(keyfile)},
    )
    extra_objects = {
        "raw2/bad.jpg": b"<html>not an image</html>",
        **dict(list(small_batch(6, "raw2/").items())),
    }
    source = cell.new_bucket("secrets-src")  # each log level seeds its own sources
    seed(cell.storage, source, extra_objects)
    produced: list[str] = []
    for vendor in ("pixelcut", "pixian", "poof"):
        sandbox.admin.set_faults(vendor, error_rate=0.3, error_statuses=[500, 502], seed=1)
        dag_id = f"faults_secrets_{vendor}"
        run = dag_tester.run(
            dag_source(dag_id, f"{vendor}_default", source, cell.dst, "raw2/", 'on_error="continue",'),
            dag_id,
        )
        summary = run.xcom("cutouts")
        assert summary is not None, run.task_states()
        produced.append(repr(summary))
        produced.append(cell.storage.read(cell.dst, summary["manifest_uri"].split("/", 3)[3]).decode())
        sandbox.admin.set_faults(vendor, auth_revoked=True)
        revoked = dag_id + "_revoked"
        run = dag_tester.run(
            dag_source(revoked, f"{vendor}_default", source, cell.new_bucket("revoked"), "raw2/"), revoked
        )
        assert run.state == "failed"
        produced.append(repr(run.xcom("cutouts", key="summary")))
        produced.extend(p.read_text(errors="replace") for p in task_logs(dag_id) + task_logs(revoked))
        produced.extend(capfd.readouterr())  # dag.test() prints the task logs on the console
        # exceptions raised by the hooks directly
        hook = make_hook(vendor)
        with pytest.raises(VendorAuthError) as info:
            hook.get_balance()
        produced += [str(info.value), repr(info.value), repr(hook), str(info.value.as_dict())]
        hook.close()
        sandbox.admin.clear_faults(vendor)
    # the hooks used directly in a task (no operator, no registry): their own connection reads
    run = dag_tester.run(DIRECT_HOOKS_DAG, "faults_secrets_direct_hooks")
    assert run.state == "success", run.task_states()
    produced.append(repr(run.xcom("balances")))
    produced.extend(capfd.readouterr())
    produced.append(log_records.text)
    blob = "\n".join(produced)
    assert "Task failed with exception" in blob and "Batch summary" in blob  # the task logs were scanned
    assert "invalid_auth_token" in blob or "Invalid" in blob or "revoked" in blob  # we scanned real errors
    if airflow_log_level == "DEBUG":  # the DEBUG lines of every layer were really in what we scanned
        silent = [f"{layer} ({marker!r})" for layer, marker in DEBUG_MARKERS.items() if marker not in blob]
        assert not silent, f"no DEBUG output scanned from {', '.join(silent)}"
    leaked = sorted(name for name, secret in secrets.items() if secret in blob)
    assert not leaked, f"leaked at {airflow_log_level}: {', '.join(leaked)}"


# -- URLs ------------------------------------------------------------------------------------------
def _hook_with(handler, monkeypatch, **kwargs):
    set_connection(
        monkeypatch, "pixelcut_sec", "pixelcut", password="sk_secret_for_url_tests", host="https://api.test"
    )
    from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook

    return PixelcutHook("pixelcut_sec", transport=httpx.MockTransport(handler), **kwargs)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "//no-scheme/a.png",
    ],
)
def test_image_url_only_http(monkeypatch, url: str) -> None:
    calls = []
    hook = _hook_with(lambda request: calls.append(request) or httpx.Response(200), monkeypatch)
    with pytest.raises(InvalidOptionError) as info:
        hook.remove_background(image_url=url)
    assert info.value.parameter == "image_url" and calls == []


def test_result_url_redirect_to_non_http_is_refused(monkeypatch) -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "file:///etc/passwd"})

    hook = _hook_with(handler, monkeypatch)
    with pytest.raises(ResultDownloadError, match="non-http"):
        hook.download("https://results.test/a.png")
    assert all(
        "authorization" not in r.headers and "x-api-key" not in {k.lower() for k in r.headers} for r in seen
    )


def test_result_url_redirect_loop_is_cut(monkeypatch) -> None:
    hook = _hook_with(
        lambda r: httpx.Response(302, headers={"location": "https://results.test/again"}), monkeypatch
    )
    with pytest.raises(ResultDownloadError, match="too many redirects"):
        hook.download("https://results.test/a.png")


@pytest.mark.parametrize("declared", [True, False])
def test_result_url_over_the_size_cap_is_cut_off(monkeypatch, declared: bool) -> None:
    body = b"\x89PNG" + bytes(5000)

    def handler(request: httpx.Request) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=body)
        return httpx.Response(200, stream=httpx.ByteStream(body), headers={"transfer-encoding": "chunked"})

    hook = _hook_with(handler, monkeypatch, max_result_bytes=1000)
    with pytest.raises(ResultDownloadError, match="cap") as info:
        hook.download("https://results.test/a.png")
    assert "sk_secret_for_url_tests" not in str(info.value)


# -- object names ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "raw/../escape.png",
        "raw/a/../../escape.png",
        "raw//abs.png",
        "raw/a\\..\\b.png",
        "raw/./x.png",
        "raw/_bgremoval/x.png",
    ],
)
def test_object_names_cannot_escape_the_destination_prefix(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        destination_name(name, "raw/", "out/", ".png")


async def test_unsafe_names_in_a_real_bucket_are_rejected_without_a_call(cell: Cell) -> None:
    """Objects whose names would escape ``out/`` are rejected per image; the safe one is processed."""
    bucket = cell.new_bucket("names")
    good = next(iter(cell.objects.values()))
    names = ["raw/../escape.png", "raw/a/../../../escape.png", "raw/a\\b.png", "raw/ok.png"]
    stored = []
    for name in names:
        try:
            cell.storage.write(bucket, name, good, content_type="image/png")
            stored.append(name)
        except BgRemovalError:  # pragma: no cover - depends on the emulator's name rules
            pass
    assert "raw/ok.png" in stored
    run = await run_batch(cell.sandbox, cell.storage, "poof", bucket, cell.dst, source_prefix="raw/")
    check_cell(run, cell.storage, cell.dst, total=len(stored), exact_charges=True)
    by_name = {row["source"].split(f"gs://{bucket}/", 1)[1]: row for row in run.rows}
    for name in stored:
        if name == "raw/ok.png":
            assert by_name[name]["status"] == "done"
        else:
            assert by_name[name]["status"] == "rejected" and by_name[name]["error_code"] == "unsafe_name"
    assert run.charged == 1
    assert set(output_objects(cell.storage, cell.dst, "")) == {"out/ok.png"}
