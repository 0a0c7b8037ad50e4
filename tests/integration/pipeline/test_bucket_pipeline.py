"""The bucket pipeline end to end: real Airflow (dag.test), fake-gcs-server and the vendor sandbox.

Nothing of ours is mocked: the operators read connections from ``AIRFLOW_CONN_*``, call the sandbox
over sockets through the real hooks, and read and write the emulated buckets.
"""

from __future__ import annotations

import collections
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
from PIL import Image

from airflow_provider_bgremoval.pipeline.manifest import read_manifest
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage

pytestmark = pytest.mark.integration

VENDORS = ("pixelcut", "pixian", "poof")

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
        destination_prefix={dst_prefix!r},
        max_concurrency=4,
        retries=0,
        {extra}
    )
"""

MAPPED_TEMPLATE = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.sharding import ListImageShardsOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    shards = ListImageShardsOperator(
        task_id="shards", source_bucket={src!r}, source_prefix="raw/", max_shards=3, min_shard_size=1
    )
    RemoveBackgroundOperator.partial(
        task_id="cutouts",
        conn_id={conn_id!r},
        source_bucket={src!r},
        source_prefix="raw/",
        destination_bucket={dst!r},
        destination_prefix={dst_prefix!r},
        max_concurrency=2,
        retries=0,
    ).expand(source_objects=shards.output)
"""


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def studio_shot(size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A product-like subject on a plain studio backdrop (the sandbox finds it reliably)."""
    image = Image.new("RGB", size, (235, 235, 235))
    w, h = size
    from PIL import ImageDraw

    ImageDraw.Draw(image).ellipse((w // 4, h // 5, 3 * w // 4, 4 * h // 5), fill=(180, 40, 40))
    return image


@pytest.fixture
def photo_sources(images_dir: Path) -> dict[str, bytes]:
    """Real photos plus derived sizes and formats, as they would sit in a shop's bucket."""
    chelsea = Image.open(images_dir / "chelsea.png").convert("RGB")
    horse = Image.open(images_dir / "horse.png")
    return {
        "raw/horse.png": (images_dir / "horse.png").read_bytes(),
        "raw/cats/chelsea.jpg": encode(chelsea, "JPEG", quality=85),
        "raw/cats/chelsea-small.webp": encode(chelsea.resize((226, 150)), "WEBP"),
        "raw/rocket.jpg": (images_dir / "rocket.jpg").read_bytes(),
        "raw/studio/shot 1.png": encode(studio_shot(), "PNG"),
        "raw/studio/horse-gray.png": encode(horse.convert("LA"), "PNG"),
    }


def seed(storage: GcsStorage, bucket: str, objects: dict[str, bytes]) -> dict[str, int]:
    return {
        name: storage.write(bucket, name, data, content_type="image/png").generation
        for name, data in objects.items()
    }


def assert_sources_untouched(storage: GcsStorage, bucket: str, objects: dict[str, bytes]) -> None:
    for name, data in objects.items():
        assert storage.read(bucket, name) == data, f"source {name} changed"


def charged(sandbox: RunningSandbox, vendor: str) -> float:
    return sandbox.admin.total_charged(vendor)


@pytest.fixture
def env(vendor_connections: RunningSandbox, gcs_storage: GcsStorage, gcs_bucket_factory: Callable[..., str]):
    return vendor_connections, gcs_storage, gcs_bucket_factory("src"), gcs_bucket_factory("dst")


def dag_source(
    dag_id: str, conn_id: str, src: str, dst: str, dst_prefix: str = "cut/", extra: str = ""
) -> str:
    return DAG_TEMPLATE.format(
        dag_id=dag_id, conn_id=conn_id, src=src, dst=dst, dst_prefix=dst_prefix, extra=extra
    )


@pytest.mark.parametrize("vendor", VENDORS)
def test_each_vendor_processes_a_prefix_and_rerun_charges_nothing(
    env, dag_tester, photo_sources, vendor
) -> None:
    sandbox, storage, src, dst = env
    seed(storage, src, photo_sources)
    dag_id = f"bucket_{vendor}"
    source = dag_source(
        dag_id, f"{vendor}_default", src, dst, extra='output_format="webp", crop=True, margin="5%",'
    )
    run = dag_tester.run(source, dag_id)
    assert run.state == "success", run.task_states()
    summary = run.xcom("cutouts")
    assert summary["done"] == len(photo_sources) and summary["failed"] == summary["rejected"] == 0
    spent = charged(sandbox, vendor)
    assert spent == pytest.approx(len(photo_sources))
    for name in photo_sources:
        out_name = "cut/" + name.removeprefix("raw/").rsplit(".", 1)[0] + ".webp"
        info = storage.stat(dst, out_name)
        assert info is not None, out_name
        assert info.metadata["bgremoval-vendor"] == vendor
        assert info.metadata["bgremoval-source"] == f"gs://{src}/{name}"
        image = Image.open(io.BytesIO(storage.read(dst, out_name)))
        image.load()
        assert image.format == "WEBP" and image.mode == "RGBA"
        assert image.getchannel("A").getextrema()[0] == 0  # something was made transparent
    manifest_uri = summary["manifest_uri"]
    manifest = read_manifest(storage.read(dst, manifest_uri.split("/", 3)[3]))
    assert sorted(row["source"] for row in manifest) == sorted(f"gs://{src}/{n}" for n in photo_sources)
    assert {row["status"] for row in manifest} == {"done"}
    assert all(row["vendor"] == vendor for row in manifest)
    # A rerun skips everything and charges nothing.
    rerun = dag_tester.run(source, dag_id)
    assert rerun.state == "success"
    assert rerun.xcom("cutouts")["skipped"] == len(photo_sources)
    assert charged(sandbox, vendor) == spent
    assert_sources_untouched(storage, src, photo_sources)


def test_background_colour_and_jpeg_output(env, dag_tester, photo_sources) -> None:
    sandbox, storage, src, dst = env
    seed(storage, src, {"raw/studio/a.png": photo_sources["raw/studio/shot 1.png"]})
    source = dag_source(
        "bucket_bg",
        "pixian_default",
        src,
        dst,
        extra='output_format="jpeg", background_color="#00ff00", max_size=(64, 64),',
    )
    run = dag_tester.run(source, "bucket_bg")
    assert run.state == "success", run.task_states()
    image = Image.open(io.BytesIO(storage.read(dst, "cut/studio/a.jpg")))
    assert image.format == "JPEG" and max(image.size) <= 64
    corner = image.convert("RGB").getpixel((0, 0))
    assert corner[1] > 200 and corner[0] < 60 and corner[2] < 60  # the backdrop became green


def test_collisions_are_refused_before_any_call(env, dag_tester, photo_sources) -> None:
    sandbox, storage, src, dst = env
    seed(
        storage,
        src,
        {"raw/a.jpg": photo_sources["raw/rocket.jpg"], "raw/a.png": photo_sources["raw/horse.png"]},
    )
    run = dag_tester.run(dag_source("bucket_collide", "poof_default", src, dst), "bucket_collide")
    assert run.state == "failed"
    assert charged(sandbox, "poof") == 0
    assert sandbox.admin.requests("poof") == []


def test_local_rejects_charge_nothing_and_are_reported(env, dag_tester, photo_sources) -> None:
    sandbox, storage, src, dst = env
    objects = {
        "raw/ok.png": photo_sources["raw/studio/shot 1.png"],
        "raw/empty.jpg": b"",
        "raw/html.jpg": b"<!doctype html><title>404</title>",
        "raw/tiny.png": encode(Image.new("RGB", (32, 32), "white"), "PNG"),
        "raw/truncated.png": photo_sources["raw/horse.png"][:3000],
    }
    seed(storage, src, objects)
    run = dag_tester.run(
        dag_source("bucket_rejects", "pixelcut_default", src, dst, extra='on_error="continue",'),
        "bucket_rejects",
    )
    assert run.state == "success", run.task_states()
    summary = run.xcom("cutouts")
    assert summary["done"] == 1 and summary["rejected"] == 4
    assert charged(sandbox, "pixelcut") == 1
    assert len(sandbox.admin.requests("pixelcut")) == 1
    manifest = read_manifest(storage.read(dst, summary["manifest_uri"].split("/", 3)[3]))
    codes = {
        row["source"].rsplit("/", 1)[1]: row["error_code"] for row in manifest if row["status"] == "rejected"
    }
    assert codes == {
        "empty.jpg": "empty_file",
        "html.jpg": "unsupported_image",
        "tiny.png": "resolution_too_low",
        "truncated.png": "malformed_image",
    }
    # fail_at_end (the default) fails the task for the same batch, still charging only the good image.
    run = dag_tester.run(
        dag_source("bucket_rejects2", "pixelcut_default", src, dst, dst_prefix="again/"), "bucket_rejects2"
    )
    assert run.state == "failed"
    assert charged(sandbox, "pixelcut") == 2


def test_out_of_credits_mid_batch_then_top_up_finishes_the_rest(env, dag_tester, images_dir) -> None:
    sandbox, storage, src, dst = env
    objects = {f"raw/item-{i:02d}.png": encode(studio_shot((96 + i, 80)), "PNG") for i in range(12)}
    seed(storage, src, objects)
    sandbox.admin.set_balance("poof", 5)
    source = dag_source("bucket_credits", "poof_default", src, dst)
    run = dag_tester.run(source, "bucket_credits")
    assert run.state == "failed"
    assert charged(sandbox, "poof") == 5
    summary = run.xcom("cutouts", key="summary")
    assert summary["done"] == 5 and summary["pending"] == 7
    assert summary["halt"]["reason"] == "out_of_credits" and summary["halt"]["remaining_images"] == 7
    assert summary["halt"]["available"] == "0"
    sandbox.admin.set_balance("poof", 100)
    rerun = dag_tester.run(source, "bucket_credits")
    assert rerun.state == "success", rerun.task_states()
    assert rerun.xcom("cutouts")["done"] == 7 and rerun.xcom("cutouts")["skipped"] == 5
    charges = sandbox.admin.charges("poof")
    assert len(charges) == 12
    assert_sources_untouched(storage, src, objects)


def test_mapped_shards_match_a_single_task(env, dag_tester, photo_sources) -> None:
    sandbox, storage, src, dst = env
    seed(storage, src, photo_sources)
    single = dag_tester.run(
        dag_source("bucket_single", "pixian_default", src, dst, dst_prefix="one/"), "bucket_single"
    )
    assert single.state == "success", single.task_states()
    mapped_source = MAPPED_TEMPLATE.format(
        dag_id="bucket_mapped", conn_id="pixian_default", src=src, dst=dst, dst_prefix="sharded/"
    )
    mapped = dag_tester.run(mapped_source, "bucket_mapped")
    assert mapped.state == "success", mapped.task_states()
    assert len([k for k in mapped.task_states() if k.startswith("cutouts[")]) == 3
    one = {
        i.name.removeprefix("one/"): storage.read(dst, i.name)
        for i in storage.list_objects(dst, "one/")
        if "_bgremoval/" not in i.name
    }
    sharded = {
        i.name.removeprefix("sharded/"): storage.read(dst, i.name)
        for i in storage.list_objects(dst, "sharded/")
        if "_bgremoval/" not in i.name
    }
    assert one.keys() == sharded.keys() and len(one) == len(photo_sources)
    for name, data in one.items():  # the sandbox is deterministic: same input and options -> same pixels
        assert Image.open(io.BytesIO(data)).tobytes() == Image.open(io.BytesIO(sharded[name])).tobytes()
    assert charged(sandbox, "pixian") == pytest.approx(2 * len(photo_sources))


# -- the run's one plan: a pre-flight keeps it, mapped tasks work on its shards (issue 12) -------------

PLANNED_TEMPLATE = """
from airflow.sdk import DAG, task
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator
from airflow_provider_bgremoval.operators.sharding import PlannedShardsOperator
from airflow_provider_bgremoval.storage.gcs import GcsStorage

BATCH = dict(
    conn_id="poof_default",
    source_bucket={src!r},
    source_prefix="raw/",
    destination_bucket={dst!r},
    destination_prefix={dst_prefix!r},
)

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    check = CreditsCheckOperator(task_id="check_credits", max_shards=3, min_shard_size=1, retries=0, **BATCH)
    shards = PlannedShardsOperator(task_id="shards", preflight_task_id="check_credits")
    cutouts = RemoveBackgroundOperator.partial(
        task_id="cutouts", max_concurrency=2, on_error="continue", retries=0, **BATCH
    ).expand(shard=shards.output)

    @task
    def meanwhile():
        # what happens to the sources between the plan and the shard tasks
        replace = {replace!r}
        if replace:
            storage = GcsStorage(gcp_conn_id=None)
            data = storage.read({src!r}, replace[1])
            storage.write({src!r}, replace[0], data, content_type="image/jpeg", if_generation_match=None)

    check >> shards >> meanwhile() >> cutouts
"""


def planned_dag(
    dag_id: str, src: str, dst: str, dst_prefix: str, replace: tuple[str, str] | None = None
) -> str:
    """A pre-flight keeping its plan in 3 shards, mapped removal over them; ``replace`` = (source, by)."""
    return PLANNED_TEMPLATE.format(dag_id=dag_id, src=src, dst=dst, dst_prefix=dst_prefix, replace=replace)


class GcsRequests:
    """Every request this process sends to fake-gcs-server (``dag.test()`` runs the tasks in-process)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        host = os.environ["STORAGE_EMULATOR_HOST"]
        real = requests.Session.request

        def request(session: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if url.startswith(host):
                self.calls.append((method, url))
            return real(session, method, url, *args, **kwargs)

        monkeypatch.setattr(requests.Session, "request", request)

    def kinds(self) -> list[tuple[str, str]]:
        """Each request as ``(kind, name)``: ``list`` (its prefix), ``read`` or ``stat`` (the object)…"""
        found = []
        for method, url in self.calls:
            parts = urlsplit(url)
            query = parse_qs(parts.query)
            if method == "GET" and parts.path.endswith("/o"):
                found.append(("list", query.get("prefix", [""])[0]))
            elif method == "GET" and "/o/" in parts.path:
                name = unquote(parts.path.split("/o/", 1)[1])
                found.append(("read" if query.get("alt") == ["media"] else "stat", name))
            elif method == "POST" and "/upload/" in parts.path:
                found.append(("write", ""))
            else:
                found.append((method.lower(), unquote(parts.path)))
        return found


def shard_rows(run: Any, shards: int) -> list[dict[str, Any]]:
    """The manifest rows of every mapped ``cutouts`` task of ``run``."""
    storage = GcsStorage(gcp_conn_id=None)
    rows: list[dict[str, Any]] = []
    for index in range(shards):
        uri = run.xcom("cutouts", map_index=index)["manifest_uri"]
        bucket, name = uri.removeprefix("gs://").split("/", 1)
        rows += read_manifest(storage.read(bucket, name))
    return rows


def broken_and_photos(photo_sources: dict[str, bytes]) -> dict[str, bytes]:
    return {**photo_sources, "raw/empty.jpg": b"", "raw/html.jpg": b"<!doctype html><title>404</title>"}


def test_a_preflight_plan_is_processed_by_mapped_shards_once(
    env, dag_tester, photo_sources, monkeypatch
) -> None:
    sandbox, storage, src, dst = env
    objects = broken_and_photos(photo_sources)
    generations = seed(storage, src, objects)
    source = planned_dag("bucket_planned", src, dst, "cut/")

    run = dag_tester.run(source, "bucket_planned")

    assert run.state == "success", run.task_states()
    assert sorted(k for k in run.task_states() if k.startswith("cutouts[")) == [
        f"cutouts[{i}]" for i in range(3)
    ]
    estimate, shards = run.xcom("check_credits"), run.xcom("shards")
    assert (estimate["sources"], estimate["billable_images"], estimate["shards"]) == (8, 8, 3)
    assert estimate["local_checks"] == "batch"  # the balance covers every source: files checked in the batch
    assert [shard["shard"] for shard in shards] == [0, 1, 2]
    rows = shard_rows(run, 3)
    assert sorted(row["source"] for row in rows) == sorted(
        f"gs://{src}/{name}" for name in objects
    )  # once each
    assert all(row["source_generation"] == generations[row["source"].split("/", 3)[3]] for row in rows)
    statuses = {row["source"].rsplit("/", 1)[1]: (row["status"], row["error_code"]) for row in rows}
    assert statuses.pop("empty.jpg") == ("rejected", "empty_file")  # the batch's local check: no call
    assert statuses.pop("html.jpg") == ("rejected", "unsupported_image")
    assert set(statuses.values()) == {("done", None)}
    charges = sandbox.admin.charges("poof")
    assert sorted(c["request_id"] for c in charges) == sorted(
        r["request_id"] for r in rows if r["status"] == "done"
    )

    # A rerun: the pre-flight lists and looks outputs up once; each shard reads its plan chunks, no source
    # beyond the two broken files its plan still holds as billable (unchecked, no output), and no listing.
    gcs = GcsRequests(monkeypatch)
    rerun = dag_tester.run(source, "bucket_planned")
    assert rerun.state == "success", rerun.task_states()
    assert rerun.xcom("check_credits")["already_done"] == 6
    assert len(sandbox.admin.charges("poof")) == len(charges)  # nothing charged again
    rows = shard_rows(rerun, 3)
    assert sorted(row["source"] for row in rows) == sorted(f"gs://{src}/{name}" for name in objects)
    assert collections.Counter(row["status"] for row in rows) == {"skipped": 6, "rejected": 2}
    kinds = gcs.kinds()
    listings = [name for kind, name in kinds if kind == "list"]
    assert listings.count("raw/") == 1  # the sources are listed once per run, by the pre-flight
    assert not [name for name in listings if name.startswith("cut/_bgremoval")]
    reads = [name for kind, name in kinds if kind in ("read", "stat") and name.startswith("raw/")]
    assert sorted(set(reads)) == ["raw/empty.jpg", "raw/html.jpg"]  # the batch's own check of billable files
    outputs = [name for kind, name in kinds if kind in ("read", "stat") and name.startswith("cut/")]
    # the claims of those two were released by the first run (it stored nothing): no output is looked up
    assert [name for name in outputs if "/_bgremoval/" not in name] == []
    chunks = [name for kind, name in kinds if kind == "read" and "/plans/" in name]
    touched = [
        kind
        for shard in rerun.xcom("shards")
        for kind in ("items", "settled")
        if shard[kind][0] < shard[kind][1]
    ]
    assert len(touched) == 5  # 2 billable and 6 settled over 3 shards: [1, 1, 0] items, [2, 2, 2] settled
    assert len(chunks) == len(touched)  # each shard reads the chunk of each range it has, once
    assert len(set(chunks)) == 2  # the plan has one chunk of each


def test_a_checked_plan_hands_its_rejects_to_the_shard_manifests(
    env, dag_tester, photo_sources, monkeypatch
) -> None:
    """A tight balance: the pre-flight checks files; the shards record its rejects without reading them."""
    sandbox, storage, src, dst = env
    objects = broken_and_photos(photo_sources)
    seed(storage, src, objects)
    sandbox.admin.set_balance("poof", len(photo_sources))  # below the unchecked bound of 8
    source = planned_dag("bucket_checked", src, dst, "cut/")

    run = dag_tester.run(source, "bucket_checked")

    assert run.state == "success", run.task_states()
    estimate = run.xcom("check_credits")
    assert (estimate["local_checks"], estimate["billable_images"], estimate["rejected_locally"]) == (
        "plan",
        6,
        2,
    )
    rows = shard_rows(run, 3)
    statuses = {row["source"].rsplit("/", 1)[1]: (row["status"], row["error_code"]) for row in rows}
    assert statuses.pop("empty.jpg") == ("rejected", "empty_file")  # planned, recorded by a shard
    assert statuses.pop("html.jpg") == ("rejected", "unsupported_image")
    assert set(statuses.values()) == {("done", None)}
    assert len(sandbox.admin.charges("poof")) == 6

    # A rerun with nothing billable: the shard tasks read their plan chunks and no source at all.
    gcs = GcsRequests(monkeypatch)
    rerun = dag_tester.run(source, "bucket_checked")
    assert rerun.state == "success", rerun.task_states()
    assert rerun.xcom("check_credits")["billable_images"] == 0
    assert [shard["items"] for shard in rerun.xcom("shards")] == [[0, 0]] * 3
    assert collections.Counter(row["status"] for row in shard_rows(rerun, 3)) == {"skipped": 6, "rejected": 2}
    kinds = gcs.kinds()
    source_reads = collections.Counter(
        name for kind, name in kinds if kind in ("read", "stat") and name.startswith("raw/")
    )
    assert set(source_reads) <= {"raw/empty.jpg", "raw/html.jpg"}  # the pre-flight's header checks only
    assert all(count == 1 for count in source_reads.values())  # read once per run, never by a shard
    chunks = [name for kind, name in kinds if kind == "read" and "/plans/" in name]
    assert len(chunks) == 3 and {name.rsplit("/", 1)[1] for name in chunks} == {"settled-000000.jsonl"}
    assert [name for kind, name in kinds if kind == "list"].count("raw/") == 2  # unchecked, then checked pass
    assert len(sandbox.admin.charges("poof")) == 6


def test_a_source_replaced_after_the_plan_is_reported_not_processed(env, dag_tester, photo_sources) -> None:
    """The generation priced is the one processed: a replaced source fails with ObjectChangedError, unpaid."""
    sandbox, storage, src, dst = env
    generations = seed(storage, src, photo_sources)
    source = planned_dag("bucket_replaced", src, dst, "cut/", replace=("raw/horse.png", "raw/rocket.jpg"))

    run = dag_tester.run(source, "bucket_replaced")

    assert run.state == "success", run.task_states()
    assert run.xcom("check_credits")["billable_images"] == len(photo_sources)  # horse.png priced as planned
    replaced = storage.stat(src, "raw/horse.png")
    assert replaced is not None and replaced.generation != generations["raw/horse.png"]
    rows = {row["source"].split("/", 3)[3]: row for row in shard_rows(run, 3)}
    assert sorted(rows) == sorted(photo_sources)
    horse = rows.pop("raw/horse.png")
    assert (horse["status"], horse["error_code"]) == ("failed", "ObjectChangedError")
    assert horse["source_generation"] == generations["raw/horse.png"]  # the generation that was planned
    assert f"now generation {replaced.generation}" in horse["error_message"]
    assert (horse["request_id"], horse["credits"], horse["attempts"]) == (None, None, 0)  # never sent
    assert {row["status"] for row in rows.values()} == {"done"}
    charges = sandbox.admin.charges("poof")
    assert sorted(c["request_id"] for c in charges) == sorted(row["request_id"] for row in rows.values())
    assert storage.stat(dst, "cut/horse.png") is None  # no output of the stale generation

    # The next run plans the new generation and processes it; the others are done.
    rerun = dag_tester.run(planned_dag("bucket_replaced", src, dst, "cut/"), "bucket_replaced")
    assert rerun.state == "success", rerun.task_states()
    assert rerun.xcom("check_credits")["billable_images"] == 1
    output = storage.stat(dst, "cut/horse.png")
    assert output is not None
    assert output.metadata["bgremoval-source-generation"] == str(replaced.generation)
    assert len(sandbox.admin.charges("poof")) == len(charges) + 1


CHAIN_TEMPLATE = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator

BATCH = dict(
    conn_id=["poof_default", "pixelcut_default"],
    source_bucket={src!r},
    source_prefix="raw/",
    destination_bucket={dst!r},
    destination_prefix="cut/",
    max_concurrency=3,
    retries=0,
)
with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    CreditsCheckOperator(task_id="preflight", **BATCH) >> RemoveBackgroundOperator(task_id="cutouts", **BATCH)
"""


def test_a_chain_is_priced_pooled_fails_over_when_the_primary_runs_out_and_a_rerun_pays_nothing(
    env, dag_tester
) -> None:
    sandbox, storage, src, dst = env
    objects = {f"raw/item-{i:02d}.png": encode(studio_shot((96 + i, 80)), "PNG") for i in range(12)}
    seed(storage, src, objects)
    sandbox.admin.set_balance("poof", 5)
    sandbox.admin.set_balance("pixelcut", 20)
    source = CHAIN_TEMPLATE.format(dag_id="bucket_chain", src=src, dst=dst)
    run = dag_tester.run(source, "bucket_chain")
    assert run.state == "success", run.task_states()
    estimate = run.xcom("preflight")
    assert [(a["conn_id"], a["images"]) for a in estimate["accounts"]] == [
        ("poof_default", 5),
        ("pixelcut_default", 7),
    ]
    assert estimate["used_accounts"] == ["poof_default", "pixelcut_default"] and estimate["sufficient"]
    summary = run.xcom("cutouts")
    assert summary["done"] == 12 and summary["pending"] == summary["failed"] == 0
    accounts = {entry["conn_id"]: entry for entry in summary["accounts"]}
    assert (accounts["poof_default"]["done"], accounts["poof_default"]["state"]) == (5, "out_of_credits")
    assert (accounts["pixelcut_default"]["done"], accounts["pixelcut_default"]["state"]) == (7, "active")
    assert len(sandbox.admin.charges("poof")) == 5 and len(sandbox.admin.charges("pixelcut")) == 7
    manifest = read_manifest(storage.read(dst, summary["manifest_uri"].split("/", 3)[3]))
    assert {(row["vendor"], row["account"]) for row in manifest} == {
        ("poof", "poof_default"),
        ("pixelcut", "pixelcut_default"),
    }
    for row in manifest:
        info = storage.stat(dst, row["destination"].split("/", 3)[3])
        assert info is not None and info.metadata["bgremoval-vendor"] == row["vendor"]
    # Topped up, the rerun finds every output finished, whichever vendor made it: nothing is charged.
    sandbox.admin.set_balance("poof", 100)
    rerun = dag_tester.run(source, "bucket_chain")
    assert rerun.state == "success", rerun.task_states()
    assert rerun.xcom("cutouts")["skipped"] == 12 and rerun.xcom("preflight")["billable_images"] == 0
    assert len(sandbox.admin.charges("poof")) == 5 and len(sandbox.admin.charges("pixelcut")) == 7
    assert_sources_untouched(storage, src, objects)
