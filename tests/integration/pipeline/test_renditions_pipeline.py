"""Renditions end to end: real Airflow (dag.test), fake-gcs-server and the vendor sandbox's charge ledger.

One vendor call per source makes a master; every rendition is rendered locally from it. Nothing of
ours is mocked.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from PIL import Image, ImageDraw

from airflow_provider_bgremoval.contact_sheet import contact_sheet_size
from airflow_provider_bgremoval.pipeline.manifest import read_manifest
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.testing.gcs_emulator import FakeGcsServer
from tests.support.gcs import fast_retry, unique_bucket_name

pytestmark = pytest.mark.integration

RENDITIONS = [
    {"name": "amazon", "preset": "amazon_main"},
    {"name": "shopify", "preset": "shopify_square"},
    {"name": "web", "format": "webp", "max_size": 1024, "background": "transparent"},
    {
        "name": "thumb",
        "format": "jpeg",
        "size": [256, 256],
        "fit": "contain",
        "background": "#f4f4f4",
        "margin": "6%",
    },
]

DAG_TEMPLATE = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    RemoveBackgroundOperator(
        task_id="cutouts",
        conn_id={conn_id!r},
        source_bucket={src!r},
        source_prefix="raw/",
        destination_bucket={dst!r},
        destination_prefix="products/",
        max_concurrency=3,
        retries=0,
        renditions={renditions!r},
        {extra}
    )
"""


def studio_shot(size: tuple[int, int], colour: tuple[int, int, int] = (180, 40, 40)) -> bytes:
    """A product on a plain studio backdrop (the sandbox cuts it out reliably), large enough for Amazon."""
    image = Image.new("RGB", size, (235, 235, 235))
    w, h = size
    ImageDraw.Draw(image).ellipse((w // 10, h // 10, 9 * w // 10, 9 * h // 10), fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


SOURCES = {
    "raw/shoe.png": studio_shot((1400, 1100)),
    "raw/bags/tote.png": studio_shot((1200, 1300), (40, 90, 180)),
    "raw/bags/clutch.png": studio_shot((1300, 1000), (30, 140, 60)),
}


def dag_source(dag_id: str, src: str, dst: str, renditions: list[dict[str, Any]], extra: str = "") -> str:
    return DAG_TEMPLATE.format(
        dag_id=dag_id, conn_id="pixian_default", src=src, dst=dst, renditions=renditions, extra=extra
    )


@pytest.fixture
def env(vendor_connections: RunningSandbox, gcs_storage: GcsStorage, gcs_bucket_factory: Callable[..., str]):
    sandbox, storage, src, dst = (
        vendor_connections,
        gcs_storage,
        gcs_bucket_factory("src"),
        gcs_bucket_factory("dst"),
    )
    generations = {
        name: storage.write(src, name, data, content_type="image/png").generation
        for name, data in SOURCES.items()
    }
    return sandbox, storage, src, dst, generations


def manifest_rows(storage: GcsStorage, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    bucket, _, name = summary["manifest_uri"].removeprefix("gs://").partition("/")
    return {row["source"].rsplit("/raw/", 1)[1]: row for row in read_manifest(storage.read(bucket, name))}


def stem(name: str) -> str:
    return name.removeprefix("raw/").rsplit(".", 1)[0]


def test_one_charge_per_source_for_four_renditions_then_a_new_rendition_costs_no_call(
    env, dag_tester
) -> None:
    sandbox, storage, src, dst, generations = env
    source = dag_source("renditions_four", src, dst, RENDITIONS)
    run = dag_tester.run(source, "renditions_four")
    assert run.state == "success", run.task_states()
    summary = run.xcom("cutouts")
    assert summary["done"] == len(SOURCES) and summary["credits_spent"] != "0"
    # The charge ledger: exactly one charge per source photo, for four renditions each.
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)
    # Pixian masters travel as delta PNGs (transfer-only: decoded to the same cut-out, same fingerprint).
    formats = [entry["params"].get("output.format") for entry in sandbox.admin.requests("pixian")]
    assert formats == ["delta_png"] * len(SOURCES)
    assert summary["masters_prefix"] == f"gs://{dst}/products/masters/"
    assert summary["renditions"] == {
        r["name"]: {"done": 3, "replaced": 0, "skipped": 0, "rejected": 0, "failed": 0} for r in RENDITIONS
    }
    rows = manifest_rows(storage, summary)
    for name in SOURCES:
        master_name = f"products/masters/{stem(name)}.png"
        master = storage.stat(dst, master_name)
        assert master is not None and master.content_type == "image/png"
        assert master.metadata["bgremoval-source"] == f"gs://{src}/{name}"
        assert master.metadata["bgremoval-source-generation"] == str(generations[name])
        image = Image.open(io.BytesIO(storage.read(dst, master_name)))
        assert image.mode == "RGBA" and image.getchannel("A").getextrema()[0] == 0  # lossless, with alpha
        row = rows[name.removeprefix("raw/")]
        assert row["status"] == "done" and row["destination"] == f"gs://{dst}/{master_name}"
        assert row["master"] == {"object": master.uri, "generation": master.generation, "status": "done"}
        assert [entry["name"] for entry in row["renditions"]] == [r["name"] for r in RENDITIONS]
        for entry in row["renditions"]:
            assert entry["status"] == "done" and entry["compliant"] is True, entry
            ext = {"amazon": "jpg", "shopify": "jpg", "web": "webp", "thumb": "jpg"}[entry["name"]]
            object_name = f"products/{entry['name']}/{stem(name)}.{ext}"
            assert entry["object"] == f"gs://{dst}/{object_name}"
            info = storage.stat(dst, object_name)
            assert info is not None and info.generation == entry["generation"]
            assert info.metadata["bgremoval-master"] == master.uri
            assert info.metadata["bgremoval-master-generation"] == str(master.generation)
            assert info.metadata["bgremoval-rendition-fingerprint"] == entry["fingerprint"]
            assert info.metadata["bgremoval-source-generation"] == str(generations[name])
            assert info.metadata["bgremoval-compliant"] == "true"
            assert entry["bytes"] == info.size and entry["width"] and entry["height"]
            assert any(check["name"] for check in entry["checks"])
        amazon = Image.open(io.BytesIO(storage.read(dst, f"products/amazon/{stem(name)}.jpg")))
        assert amazon.format == "JPEG" and max(amazon.size) >= 1000
        assert amazon.convert("RGB").getpixel((0, 0)) == (255, 255, 255)
        thumb = Image.open(io.BytesIO(storage.read(dst, f"products/thumb/{stem(name)}.jpg")))
        assert thumb.size == (256, 256)
    # A rerun: nothing to do, nothing paid.
    rerun = dag_tester.run(source, "renditions_four")
    assert rerun.state == "success", rerun.task_states()
    assert rerun.xcom("cutouts")["skipped"] == len(SOURCES)
    assert rerun.xcom("cutouts")["renditions"]["amazon"]["skipped"] == len(SOURCES)
    # Marketing asks for a new rendition next month: rendered from the stored masters, 0 vendor calls.
    calls_before = len(sandbox.admin.requests("pixian"))
    more = [*RENDITIONS, {"name": "square", "format": "png", "aspect": "1:1", "background": "transparent"}]
    later = dag_tester.run(dag_source("renditions_four", src, dst, more), "renditions_four")
    assert later.state == "success", later.task_states()
    summary = later.xcom("cutouts")
    assert len(sandbox.admin.requests("pixian")) == calls_before
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)
    assert summary["credits_spent"] == "0" and summary["done"] == len(SOURCES)
    assert summary["renditions"]["square"]["done"] == len(SOURCES)
    assert summary["renditions"]["amazon"]["skipped"] == len(SOURCES)
    for row in manifest_rows(storage, summary).values():
        assert row["master"]["status"] == "skipped" and row["credits"] is None
    for name in SOURCES:
        square = Image.open(io.BytesIO(storage.read(dst, f"products/square/{stem(name)}.png")))
        assert square.size[0] == square.size[1] and square.mode == "RGBA"
    for name, data in SOURCES.items():
        assert storage.read(src, name) == data


def test_a_changed_source_pays_exactly_once_more_and_replaces_its_stale_renditions(env, dag_tester) -> None:
    sandbox, storage, src, dst, _ = env
    renditions = RENDITIONS[2:]
    names = {"web": "products/web/shoe.webp", "thumb": "products/thumb/shoe.jpg"}
    # overwrite=True: a master of another source generation is replaced, as any output (else refused).
    # The first run's claims stay live (an hour), but they cover the old generation only: claims are
    # per source generation (docs/pipeline.md), so the rerun pays for the new one at once.
    source = dag_source("renditions_change", src, dst, renditions, extra="overwrite=True,")
    assert dag_tester.run(source, "renditions_change").state == "success"
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)
    before = {key: storage.stat(dst, name) for key, name in names.items()}
    old_master = storage.stat(dst, "products/masters/shoe.png")
    changed = studio_shot((1400, 1100), (200, 160, 20))
    new_generation = storage.write(
        src, "raw/shoe.png", changed, content_type="image/png", if_generation_match=None
    ).generation
    run = dag_tester.run(source, "renditions_change")
    assert run.state == "success", run.task_states()
    summary = run.xcom("cutouts")
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES) + 1  # exactly once more
    assert summary["done"] == 1 and summary["skipped"] == len(SOURCES) - 1
    master = storage.stat(dst, "products/masters/shoe.png")
    assert master is not None and old_master is not None and master.generation != old_master.generation
    assert master.metadata["bgremoval-source-generation"] == str(new_generation)
    row = manifest_rows(storage, summary)["shoe.png"]
    assert row["master"]["status"] == "replaced"
    for key, name in names.items():
        old, info = before[key], storage.stat(dst, name)
        assert old is not None and info is not None
        assert info.generation != old.generation  # replaced with if_generation_match=<old generation>
        assert info.metadata["bgremoval-master-generation"] == str(master.generation)
        assert summary["renditions"][key] == {
            "done": 0,
            "replaced": 1,
            "skipped": 2,
            "rejected": 0,
            "failed": 0,
        }


def test_a_deliberately_wrong_preset_is_caught_and_never_written(env, dag_tester) -> None:
    sandbox, storage, src, dst, _ = env
    wrong = [{"name": "amazon", "preset": "amazon_main", "background": "#f4f4f4"}, RENDITIONS[3]]
    run = dag_tester.run(dag_source("renditions_wrong", src, dst, wrong), "renditions_wrong")
    assert run.state == "failed"  # on_error="fail_at_end": a non-compliant rendition fails the task
    summary = run.xcom("cutouts", key="summary")
    assert summary["renditions"]["amazon"]["rejected"] == len(SOURCES)
    assert summary["renditions"]["thumb"]["done"] == len(SOURCES)
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)  # the masters were paid for and kept
    for row in manifest_rows(storage, summary).values():
        amazon = row["renditions"][0]
        assert amazon["status"] == "rejected" and amazon["compliant"] is False
        assert "border_white" in amazon["failed"] or any(not c["passed"] for c in amazon["checks"])
    assert list(storage.list_objects(dst, "products/amazon/")) == []
    # With on_error="continue" the same is reported and the task succeeds; still nothing paid again.
    run = dag_tester.run(
        dag_source("renditions_wrong_ok", src, dst, wrong, extra='on_error="continue",'),
        "renditions_wrong_ok",
    )
    assert run.state == "success", run.task_states()
    assert run.xcom("cutouts")["renditions"]["amazon"]["rejected"] == len(SOURCES)
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)


def logged(log: Path, start: int) -> list[str]:
    """The requests (``GET /path?query``, unquoted) fake-gcs-server logged since byte ``start``."""
    with log.open("rb") as handle:
        handle.seek(start)
        text = handle.read().decode(errors="replace")
    return [unquote(f"{m} {p}") for m, p in re.findall(r'\\"([A-Z]+) (\S+) HTTP/1\.1\\"', text)]


def reads_under(requests: list[str], bucket: str, folder: str) -> int:
    """Object reads (whole or ranged) under ``folder`` of ``bucket``."""
    return sum(1 for r in requests if f"/b/{bucket}/o/{folder}" in r and "alt=media" in r)


def listings_of(requests: list[str], bucket: str, prefix: str) -> int:
    """Listing requests of ``prefix`` in ``bucket``."""
    return sum(
        1 for r in requests if r.startswith(f"GET /storage/v1/b/{bucket}/o?") and f"prefix={prefix}&" in r
    )


@pytest.fixture
def counted_env(
    vendor_connections: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RunningSandbox, GcsStorage, FakeGcsServer, str, str]]:
    """A fake-gcs-server of this test's own that logs every request (the session's logs warnings only)."""
    with FakeGcsServer(log_path=tmp_path / "gcs.log", log_level="info") as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        src, dst = unique_bucket_name("src"), unique_bucket_name("dst")
        server.create_bucket(src)
        server.create_bucket(dst)
        storage = GcsStorage(gcp_conn_id=None, retry=fast_retry(10.0), timeout=10.0)
        for name, data in SOURCES.items():
            storage.write(src, name, data, content_type="image/png")
        yield vendor_connections, storage, server, src, dst


def test_a_rejected_rendition_is_recorded_and_not_rendered_again_until_its_spec_changes(
    counted_env, dag_tester
) -> None:
    sandbox, storage, server, src, dst = counted_env
    wrong = [{"name": "amazon", "preset": "amazon_main", "background": "#f4f4f4"}, RENDITIONS[3]]
    source = dag_source("renditions_recorded", src, dst, wrong, extra='on_error="continue",')
    assert dag_tester.run(source, "renditions_recorded").state == "success"
    records = [info.name for info in storage.list_objects(dst, "products/_bgremoval/noncompliant/")]
    assert records == sorted(f"products/_bgremoval/noncompliant/{stem(name)}/amazon" for name in SOURCES)
    first = {name: storage.stat(dst, name) for name in records}
    # Run 2: every amazon rendition is settled from its record: no master read, nothing rendered.
    start = server.log_path.stat().st_size
    run = dag_tester.run(source, "renditions_recorded")
    assert run.state == "success", run.task_states()
    requests = logged(server.log_path, start)
    assert reads_under(requests, dst, "products/masters/") == 0
    assert listings_of(requests, dst, "products/_bgremoval/noncompliant/") == 1  # one for the window
    assert list(storage.list_objects(dst, "products/amazon/")) == []
    assert {name: storage.stat(dst, name) for name in records} == first  # not rewritten
    summary = run.xcom("cutouts")
    assert summary["rejected"] == len(SOURCES) and summary["renditions"]["amazon"]["rejected"] == len(SOURCES)
    assert summary["renditions"]["thumb"]["skipped"] == len(SOURCES)
    for row in manifest_rows(storage, summary).values():
        assert row["status"] == "rejected" and row["error_code"] == "rendition_noncompliant"
        amazon = row["renditions"][0]
        assert amazon["status"] == "rejected" and "not re-rendered" in amazon["error_message"]
        assert amazon["record"].startswith(f"gs://{dst}/products/_bgremoval/noncompliant/")
    # The preset is fixed (its spec, so its fingerprint, changes): rendered from the masters, written.
    start = server.log_path.stat().st_size
    fixed = dag_source("renditions_recorded", src, dst, [RENDITIONS[0], RENDITIONS[3]])
    run = dag_tester.run(fixed, "renditions_recorded")
    assert run.state == "success", run.task_states()
    assert reads_under(logged(server.log_path, start), dst, "products/masters/") == len(SOURCES)
    assert run.xcom("cutouts")["renditions"]["amazon"]["done"] == len(SOURCES)
    assert len(list(storage.list_objects(dst, "products/amazon/"))) == len(SOURCES)
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)  # paid once, in run 1


SHARDED_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator
from airflow_provider_bgremoval.operators.sharding import PlannedShardsOperator

BATCH = dict(
    conn_id="pixian_default", source_bucket={src!r}, source_prefix="raw/", destination_bucket={dst!r},
    destination_prefix="products/", renditions={renditions!r},
)

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    check = CreditsCheckOperator(task_id="check_credits", max_shards=2, min_shard_size=1, retries=0, **BATCH)
    shards = PlannedShardsOperator(task_id="shards", preflight_task_id="check_credits")
    check >> shards >> RemoveBackgroundOperator.partial(
        task_id="cutouts", max_concurrency=2, on_error="continue", retries=0, **BATCH
    ).expand(shard=shards.output)
"""


def shard_summaries(run: Any) -> list[dict[str, Any]]:
    return [run.xcom("cutouts", map_index=index) for index in range(2)]


def test_a_plan_kept_in_the_bucket_carries_renditions_to_mapped_tasks(counted_env, dag_tester) -> None:
    sandbox, storage, server, src, dst = counted_env
    wrong = {"name": "amazon", "preset": "amazon_main", "background": "#f4f4f4"}
    renditions = [RENDITIONS[3], wrong]
    source = SHARDED_DAG.format(dag_id="renditions_sharded", src=src, dst=dst, renditions=renditions)
    run = dag_tester.run(source, "renditions_sharded")
    assert run.state == "success", run.task_states()
    summaries = shard_summaries(run)
    assert sum(summary["done"] for summary in summaries) == len(SOURCES)
    assert sum(s["renditions"]["thumb"]["done"] for s in summaries) == len(SOURCES)
    assert sum(s["renditions"]["amazon"]["rejected"] for s in summaries) == len(SOURCES)
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)
    assert len(list(storage.list_objects(dst, "products/_bgremoval/noncompliant/"))) == len(SOURCES)
    # A rendition added: render-only items in the kept plan, their masters and renditions found at
    # planning; the mapped tasks read each master once and list nothing.
    more = SHARDED_DAG.format(
        dag_id="renditions_sharded", src=src, dst=dst, renditions=[*renditions, RENDITIONS[2]]
    )
    start = server.log_path.stat().st_size
    run = dag_tester.run(more, "renditions_sharded")
    assert run.state == "success", run.task_states()
    requests = logged(server.log_path, start)
    assert reads_under(requests, dst, "products/masters/") == len(SOURCES)
    for folder in ("products/masters/", "products/web/", "products/_bgremoval/noncompliant/"):
        assert listings_of(requests, dst, folder) == 1, folder  # the pre-flight's planning only
    assert run.xcom("check_credits")["render_only_images"] == len(SOURCES)
    summaries = shard_summaries(run)
    assert sum(s["renditions"]["web"]["done"] for s in summaries) == len(SOURCES)
    assert sum(s["renditions"]["amazon"]["rejected"] for s in summaries) == len(SOURCES)  # from records
    assert sum(s["renditions"]["thumb"]["skipped"] for s in summaries) == len(SOURCES)
    assert sum(s["credits_spent"] != "0" for s in summaries) == 0
    assert len(list(storage.list_objects(dst, "products/web/"))) == len(SOURCES)
    # Nothing left to render: settled in the plan (rejected from the records), nothing read.
    start = server.log_path.stat().st_size
    run = dag_tester.run(more, "renditions_sharded")
    assert run.state == "success", run.task_states()
    assert reads_under(logged(server.log_path, start), dst, "products/masters/") == 0
    summaries = shard_summaries(run)
    assert sum(s["rejected"] for s in summaries) == len(SOURCES)
    for summary in summaries:
        for row in manifest_rows(storage, summary).values():
            assert row["error_code"] == "rendition_noncompliant"
            assert [entry["status"] for entry in row["renditions"]] == ["skipped", "rejected", "skipped"]
    assert len(sandbox.admin.charges("pixian")) == len(SOURCES)


REPORT_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.report import RunReportOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    cutouts = RemoveBackgroundOperator(
        task_id="cutouts", conn_id="pixian_default", source_bucket={src!r}, source_prefix="raw/",
        destination_bucket={dst!r}, destination_prefix="products/", renditions={renditions!r}, retries=0,
    )
    cutouts >> RunReportOperator(
        task_id="report", destination_bucket={dst!r}, destination_prefix="products/", sample_size=3, columns=1
    )
"""


def test_the_run_report_contact_sheet_shows_each_master_and_its_renditions(env, dag_tester) -> None:
    _, storage, src, dst, _ = env
    source = REPORT_DAG.format(dag_id="renditions_report", src=src, dst=dst, renditions=RENDITIONS[2:])
    run = dag_tester.run(source, "renditions_report")
    assert run.state == "success", run.task_states()
    report = run.xcom("report")
    bucket, _, name = report["contact_sheet_uri"].removeprefix("gs://").partition("/")
    sheet = Image.open(io.BytesIO(storage.read(bucket, name)))
    assert sheet.size == contact_sheet_size(3, columns=1, renditions=2)


GENERATE_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import GenerateBackgroundOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    GenerateBackgroundOperator(
        task_id="scenes", conn_id="pixelcut_default", source_bucket={src!r}, source_prefix="raw/",
        destination_bucket={dst!r}, destination_prefix="scenes/", scene="wood", retries=0,
        renditions={renditions!r},
    )
"""


def test_generate_background_scenes_are_masters_too(env, dag_tester) -> None:
    sandbox, storage, src, dst, _ = env
    # No alpha: the whole scene is the subject; a background shows only in the margin around it.
    renditions = [
        {"name": "thumb", "format": "webp", "size": 300, "background": "#ffffff", "margin": "5%"},
        {"name": "banner", "format": "jpeg", "size": [1200, 400], "background": "#202020", "margin": "4%"},
    ]
    source = GENERATE_DAG.format(dag_id="renditions_scenes", src=src, dst=dst, renditions=renditions)
    run = dag_tester.run(source, "renditions_scenes")
    assert run.state == "success", run.task_states()
    assert len(sandbox.admin.charges("pixelcut")) == len(SOURCES)  # one generate call per photo
    summary = run.xcom("scenes")
    assert summary["renditions"]["thumb"]["done"] == summary["renditions"]["banner"]["done"] == len(SOURCES)
    master = Image.open(io.BytesIO(storage.read(dst, "scenes/masters/shoe.jpg")))
    assert master.format == "JPEG" and master.size == (1024, 1024)  # the scene's JPEG is the master
    thumb = Image.open(io.BytesIO(storage.read(dst, "scenes/thumb/shoe.webp")))
    assert thumb.size == (300, 300)
    banner = Image.open(io.BytesIO(storage.read(dst, "scenes/banner/bags/tote.jpg")))
    assert banner.size == (1200, 400)
