"""The bucket pipeline end to end: real Airflow (dag.test), fake-gcs-server and the vendor sandbox.

Nothing of ours is mocked: the operators read connections from ``AIRFLOW_CONN_*``, call the sandbox
over sockets through the real hooks, and read and write the emulated buckets.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
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
