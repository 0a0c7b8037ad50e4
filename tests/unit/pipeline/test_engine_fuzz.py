"""Property-based fuzz of vendor replies (Hypothesis) through each vendor's hook *and* the batch engine.

Property: whatever the vendor answers (status × headers × body, see
:mod:`tests.support.reply_strategies`: truncated, lying headers, wrong types, huge dimensions,
animated, 16-bit, CMYK…), :meth:`BatchRunner.run` returns — no uncaught exception, ever — with
exactly one manifest row per source in a final state, a reason for everything not done, an output
that decodes fully for every done row and no output for any other, and money that adds up
(``credits_spent`` = Σ row credits, ``possibly_charged`` = Σ row lost replies).

The replies go over ``httpx.MockTransport`` (the vendor) into the real hooks, the real engine and a
real fake-gcs-server. Deterministic in CI (``derandomize=True``); ``REPLY_FUZZ_SCALE`` and
``REPLY_FUZZ_RANDOM`` explore more, as for the hook fuzz.
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook
from airflow_provider_bgremoval.hooks.pixian import PixianHook
from airflow_provider_bgremoval.hooks.poof import PoofHook
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.pacing import ManualClock
from airflow_provider_bgremoval.pipeline.claims import ClaimStore
from airflow_provider_bgremoval.pipeline.engine import BatchRunner
from airflow_provider_bgremoval.pipeline.manifest import STATUSES, ManifestWriter, read_manifest
from airflow_provider_bgremoval.pipeline.planning import BatchSpec, OutputIdentity, plan_batch
from airflow_provider_bgremoval.pipeline.processors import RemovalProcessor
from airflow_provider_bgremoval.retry import RetryPolicy
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.testing.gcs_emulator import FakeGcsServer
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutOptions
from tests.support.connections import set_connection
from tests.support.gcs import unique_bucket_name
from tests.support.reply_strategies import (
    DOWNLOAD_URL,
    INPUT_SIZE,
    Reply,
    ReplyScript,
    replies,
    reply_scripts,
)

pytestmark = pytest.mark.integration

_SCALE = max(1, int(os.environ.get("REPLY_FUZZ_SCALE", "1")))
#: Batches per vendor path (each: 4 images through plan + engine + fake-gcs-server).
EXAMPLES = 40 * _SCALE
IMAGES = 4
FAST = RetryPolicy(
    max_attempts=3, max_wait=1.0, initial_backoff=0.0, max_backoff=0.0, jitter=0.0, max_retry_after=0.0
)

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=not os.environ.get("REPLY_FUZZ_RANDOM"),
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


def _source(i: int) -> bytes:
    image = Image.new("RGB", INPUT_SIZE, (40 + i * 30, 90, 160))
    ImageDraw.Draw(image).ellipse((16, 12, 64, 52), fill=(240, 200, 60))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def fuzz_buckets(fake_gcs: FakeGcsServer) -> tuple[GcsStorage, str, str]:
    storage = GcsStorage(gcp_conn_id=None, timeout=10.0)
    src, dst = unique_bucket_name("fuzz-src"), unique_bucket_name("fuzz-dst")
    fake_gcs.create_bucket(src)
    fake_gcs.create_bucket(dst)
    for i in range(IMAGES):
        storage.write(src, f"raw/{i}.png", _source(i), content_type="image/png")
    return storage, src, dst


@pytest.fixture(scope="module", autouse=True)
def _connections() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        set_connection(patch, "pixelcut_default", "pixelcut", password="sk_fuzz_pixelcut_key_0123456789")
        set_connection(
            patch, "pixian_default", "pixian", login="px_fuzz_id", password="px_fuzz_secret_0123456789"
        )
        set_connection(patch, "poof_default", "poof", password="pk_fuzz_poof_key_0123456789")
        yield


class Vendor:
    """MockTransport handler: each vendor call takes the next script; result downloads their own."""

    def __init__(self, scripts: list[list[Reply]], download: list[Reply]) -> None:
        self.scripts = [ReplyScript(script) for script in scripts]
        self.download = ReplyScript(download)
        self.calls = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        if request.url.host == httpx.URL(DOWNLOAD_URL).host:
            return self.download.next()
        script = self.scripts[self.calls % len(self.scripts)]
        self.calls += 1
        return script.next()


async def _no_sleep(_: float) -> None:
    return None


HOOKS: dict[str, Any] = {"pixelcut": PixelcutHook, "pixian": PixianHook, "poof": PoofHook}
TALLY: collections.Counter[str] = collections.Counter()


def _run(storage: GcsStorage, src: str, dst: str, vendor: str, vendor_options: Any, handler: Vendor) -> None:
    hook = HOOKS[vendor](
        retry_policy=FAST,
        async_transport=httpx.MockTransport(handler),
        async_sleep=_no_sleep,
        pacing_clock=ManualClock(),  # pacing waits move a fake clock
    )
    processor = RemovalProcessor(hook, RemovalOptions(), vendor_options)
    prefix = f"{uuid.uuid4().hex[:12]}/"
    spec = BatchSpec(
        source_bucket=src, destination_bucket=dst, source_prefix="raw/", destination_prefix=prefix
    )

    async def batch() -> tuple[Any, bytes]:
        plan = await plan_batch(
            storage,
            spec,
            extension=processor.extension,
            identity=OutputIdentity.of(processor),
            limits=processor.limits,
        )
        with ManifestWriter() as manifest:
            runner = BatchRunner(
                storage,
                processor,
                plan,
                manifest,
                max_concurrency=2,
                on_error="continue",
                writer_id="fuzz/run/task/-1",
                claims=ClaimStore(storage, dst, spec.internal_prefix, "fuzz/run/task/-1"),
            )
            try:
                result = await runner.run()  # the property: this never raises
            finally:
                await hook.aclose()
            return result, manifest.getvalue()

    result, data = asyncio.run(batch())
    rows = read_manifest(data)
    assert len(rows) == IMAGES and len({row["source"] for row in rows}) == IMAGES
    for row in rows:
        assert row["status"] in STATUSES, row
        TALLY[f"{vendor}:{row['status']}:{row['error_code']}"] += 1
        if row["status"] != "done":
            assert row["error_code"] and row["error_message"], row
    done = {row["destination"] for row in rows if row["status"] == "done"}
    written = {
        f"gs://{dst}/{info.name}"
        for info in storage.list_objects(dst, prefix)
        if "/_bgremoval/" not in f"/{info.name}"
    }
    assert written == done
    for uri in written:
        Image.open(io.BytesIO(storage.read(dst, uri.split("/", 3)[3]))).load()
    assert result.credits_spent == sum((Decimal(r["credits"]) for r in rows if r.get("credits")), Decimal(0))
    assert result.possibly_charged == sum(int(r["possibly_charged"]) for r in rows)


@pytest.mark.parametrize("vendor", ["pixelcut", "pixian", "poof"])
def test_any_vendor_reply_leaves_the_batch_standing(fuzz_buckets, vendor: str) -> None:
    storage, src, dst = fuzz_buckets

    @FUZZ_SETTINGS
    @given(scripts=st.lists(reply_scripts(max_replies=2), min_size=1, max_size=IMAGES))
    def prop(scripts: list[list[Reply]]) -> None:
        _run(storage, src, dst, vendor, None, Vendor(scripts, [Reply(404, (), b"", "none")]))

    prop()
    print(f"engine fuzz [{vendor}]: {EXAMPLES} batches x {IMAGES} images; outcomes {dict(TALLY)}")
    TALLY.clear()


def test_pixelcut_result_url_replies_leave_the_batch_standing(fuzz_buckets) -> None:
    """JSON ``result_url`` mode: the API reply and the result download are both hostile."""
    storage, src, dst = fuzz_buckets

    @FUZZ_SETTINGS
    @given(api=reply_scripts(max_replies=2), download=reply_scripts(replies, max_replies=2))
    def prop(api: list[Reply], download: list[Reply]) -> None:
        _run(storage, src, dst, "pixelcut", PixelcutOptions(result_delivery="url"), Vendor([api], download))

    prop()
    print(f"engine fuzz [pixelcut url]: {EXAMPLES} batches x {IMAGES} images; outcomes {dict(TALLY)}")
    TALLY.clear()
