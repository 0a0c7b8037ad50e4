"""The example DAGs, unchanged, end to end with dag.test(), fake-gcs-server and the vendor sandbox.

Settings reach the DAGs as trigger ``conf`` (their params); connections as ``AIRFLOW_CONN_*``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from airflow_provider_bgremoval.contact_sheet import contact_sheet_size
from airflow_provider_bgremoval.pipeline.manifest import read_manifest
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.integration.examples.conftest import EXAMPLES, encode, renditions_conf, seed
from tests.support.airflow import DagRunResult

pytestmark = pytest.mark.integration

BUCKET_DAG = EXAMPLES / "example_bucket_remove_background.py"
GENERATE_DAG = EXAMPLES / "example_generate_background.py"
MONITOR_DAG = EXAMPLES / "example_credit_monitor.py"


def name_of(uri: str) -> str:
    return uri.split("/", 3)[3]


@pytest.fixture
def env(vendor_connections: RunningSandbox, gcs_storage: GcsStorage, gcs_bucket_factory: Callable[..., str]):
    return vendor_connections, gcs_storage, gcs_bucket_factory("raw"), gcs_bucket_factory("cut")


@pytest.fixture
def photos(images_dir: Path) -> dict[str, bytes]:
    """Real photos, derived variants and one broken upload, under ``products/`` (8: two shards of 4)."""
    chelsea = Image.open(images_dir / "chelsea.png").convert("RGB")
    horse = Image.open(images_dir / "horse.png")
    return {
        "products/horse.png": (images_dir / "horse.png").read_bytes(),
        "products/rocket.jpg": (images_dir / "rocket.jpg").read_bytes(),
        "products/astronaut.jpg": (images_dir / "astronaut.jpg").read_bytes(),
        "products/chelsea.png": (images_dir / "chelsea.png").read_bytes(),
        "products/coffee.png": (images_dir / "coffee.png").read_bytes(),
        "products/variants/chelsea.webp": encode(chelsea.resize((300, 200)), "WEBP"),
        "products/variants/horse-gray.png": encode(horse.convert("LA"), "PNG"),
        "products/broken.jpg": (images_dir / "rocket.jpg").read_bytes()[:2000],
    }


def assert_cutouts(storage: GcsStorage, src: str, dst: str, good: list[str]) -> None:
    """One WebP cut-out per good photo, with provenance metadata; none for the broken one."""
    for name in good:
        out = "cutouts/" + name.removeprefix("products/").rsplit(".", 1)[0] + ".webp"
        info = storage.stat(dst, out)
        assert info is not None, out
        assert info.metadata["bgremoval-source"] == f"gs://{src}/{name}"
        image = Image.open(io.BytesIO(storage.read(dst, out)))
        assert image.format == "WEBP" and image.mode == "RGBA"
    assert storage.stat(dst, "cutouts/broken.webp") is None


def assert_first_report(
    storage: GcsStorage, src: str, dst: str, run: DagRunResult, photos: dict[str, bytes], good: list[str]
) -> None:
    """The run report, its manifests, report.json and the contact sheet of the first run."""
    estimate = run.xcom("check_credits")
    report = run.xcom("run_report")
    assert report["counts"] == {"done": len(good), "skipped": 0, "rejected": 1, "failed": 0, "pending": 0}
    assert report["credits_spent"] == str(len(good))
    assert len(report["manifests"]) == 2
    rows = [row for uri in report["manifests"] for row in read_manifest(storage.read(dst, name_of(uri)))]
    assert sorted(r["source"] for r in rows) == sorted(f"gs://{src}/{n}" for n in photos)
    assert {r["status"] for r in rows} == {"done", "rejected"}

    written = json.loads(storage.read(dst, name_of(report["report_uri"])))
    assert written["counts"] == report["counts"]
    assert written["estimate"]["billable_images"] == estimate["billable_images"]
    assert [r["source"] for r in written["rejected"]] == [f"gs://{src}/products/broken.jpg"]

    # the contact sheet: a valid PNG of the documented size, with the sample pairs
    sheet = Image.open(io.BytesIO(storage.read(dst, name_of(report["contact_sheet_uri"]))))
    sheet.verify()
    sheet = Image.open(io.BytesIO(storage.read(dst, name_of(report["contact_sheet_uri"]))))
    assert sheet.format == "PNG"
    assert sheet.size == contact_sheet_size(6)
    assert report["sample_pairs"] == 6  # the example's sample_size


def assert_halted_before_spending(
    halted: DagRunResult, sandbox: RunningSandbox, requests_before: int
) -> None:
    """The pre-flight failed the run, pricing both accounts of the chain; no billed call was made."""
    assert halted.state == "failed"
    states = halted.task_states()
    assert states["check_credits"] == "failed"
    assert states["run_report"] == "upstream_failed"
    halt = halted.xcom("check_credits", key="halt")
    assert halt["reason"] == "insufficient_credits" and halt["available"] == "0.5"  # 0.5 + 0
    assert [(a["conn_id"], a["available"]) for a in halt["accounts"]] == [
        ("pixelcut_default", "0.5"),
        ("poof_default", "0"),
    ]
    billed = [r for r in sandbox.admin.requests()[requests_before:] if r.get("charged")]
    assert billed == []


def test_bucket_example_end_to_end(env, dag_tester, pixelcut_pool, photos, images_dir) -> None:
    sandbox, storage, src, dst = env
    seed(storage, src, photos)
    conf = {
        "source_bucket": src,
        "source_prefix": "products/",
        "destination_bucket": dst,
        "destination_prefix": "cutouts/",
        "max_shards": 2,
        "output_format": "webp",
    }
    good = sorted(n for n in photos if "broken" not in n)

    run = dag_tester.run_file(BUCKET_DAG, "example_bucket_remove_background", conf=conf)
    states = run.task_states()
    assert run.state == "success", states
    assert states["check_credits"] == "success" and states["run_report"] == "success"
    assert len([k for k in states if k.startswith("remove_background[")]) == 2
    estimate = run.xcom("check_credits")
    assert estimate["sufficient"] is True and estimate["vendor"] == "pixelcut"
    assert estimate["used_accounts"] == ["pixelcut_default"]  # the primary pays for everything
    assert_cutouts(storage, src, dst, good)
    # the sandbox charged exactly one credit per good photo, all on the primary
    assert sandbox.admin.total_charged("pixelcut") == len(good)
    assert len(sandbox.admin.charges("pixelcut")) == len(good) and sandbox.admin.charges("poof") == []
    assert_first_report(storage, src, dst, run, photos, good)

    # low balance on both accounts + new photos: the pre-flight halts before any charge
    new = encode(ImageOps.mirror(Image.open(images_dir / "chelsea.png").convert("RGB")), "JPEG")
    storage.write(src, "products/new/chelsea-mirrored.jpg", new, content_type="image/jpeg")
    sandbox.admin.set_balance("pixelcut", 0.5)
    sandbox.admin.set_balance("poof", 0)
    requests_before = len(sandbox.admin.requests())
    halted = dag_tester.run_file(BUCKET_DAG, "example_bucket_remove_background", conf=conf)
    assert_halted_before_spending(halted, sandbox, requests_before)
    assert len(sandbox.admin.charges("pixelcut")) == len(good) and sandbox.admin.charges("poof") == []

    # the secondary topped up, the primary still short: Poof makes the new photo in the same task
    sandbox.admin.set_balance("poof", 100)
    resumed = dag_tester.run_file(BUCKET_DAG, "example_bucket_remove_background", conf=conf)
    assert resumed.state == "success", resumed.task_states()
    assert resumed.xcom("check_credits")["used_accounts"] == ["poof_default"]
    report = resumed.xcom("run_report")
    assert report["counts"]["done"] == 1 and report["counts"]["skipped"] == len(good)
    written = json.loads(storage.read(dst, name_of(report["report_uri"])))  # report.json
    by_account = {a["conn_id"]: a for a in written["accounts"]}
    assert by_account["poof_default"]["done"] == 1 and by_account["poof_default"]["vendor"] == "poof"
    assert len(sandbox.admin.charges("pixelcut")) == len(good) and len(sandbox.admin.charges("poof")) == 1
    made = storage.stat(dst, "cutouts/new/chelsea-mirrored.webp")
    assert made is not None and made.metadata["bgremoval-vendor"] == "poof"
    # topped up again: a rerun charges nothing, whichever vendor made the cut-outs
    sandbox.admin.set_balance("pixelcut", 100)
    rerun = dag_tester.run_file(BUCKET_DAG, "example_bucket_remove_background", conf=conf)
    assert rerun.state == "success"
    assert rerun.xcom("run_report")["counts"]["skipped"] == len(good) + 1
    assert rerun.xcom("run_report")["contact_sheet_uri"] is None
    assert len(sandbox.admin.charges("pixelcut")) == len(good) and len(sandbox.admin.charges("poof")) == 1
    for name, data in photos.items():
        assert storage.read(src, name) == data


def bag_renditions() -> list[dict[str, object]]:
    """The example's default renditions, as its trigger form holds them."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(BUCKET_DAG)).get_dag("example_bucket_remove_background")
    assert dag is not None
    return list(dag.params["renditions"])


def test_bucket_example_renders_renditions_of_png_cutouts_for_free(
    env, dag_tester, pixelcut_pool, photos
) -> None:
    sandbox, storage, src, dst = env
    seed(storage, src, photos)
    conf = renditions_conf(src, dst)
    good = sorted(n for n in photos if "broken" not in n)
    run = dag_tester.run_file(BUCKET_DAG, "example_bucket_remove_background", conf=conf)
    assert run.state == "success", run.task_states()
    assert run.task_states()["renditions"] == "success"
    summary = run.xcom("renditions")
    assert summary["vendor"] == "local" and summary["credits_spent"] == "0"
    assert len(sandbox.admin.charges("pixelcut")) == len(good)  # the cut-outs only
    counts = summary["renditions"]
    assert counts["thumb"]["done"] == counts["shopify"]["done"] == len(good)
    # The sample photos are smaller than Amazon's 1,000 px minimum: reported, never written.
    assert counts["amazon"]["rejected"] == len(good)
    assert list(storage.list_objects(dst, "renditions/amazon/")) == []
    for name in good:
        stem = name.removeprefix("products/").rsplit(".", 1)[0]
        thumb = Image.open(io.BytesIO(storage.read(dst, f"renditions/thumb/{stem}.webp")))
        assert thumb.size == (256, 256) and thumb.mode == "RGBA"
    # A rerun: nothing paid, nothing rendered again (the rejected ones are tried again, for free).
    rerun = dag_tester.run_file(BUCKET_DAG, "example_bucket_remove_background", conf=conf)
    assert rerun.state == "success", rerun.task_states()
    assert rerun.xcom("renditions")["renditions"]["thumb"]["skipped"] == len(good)
    assert len(sandbox.admin.charges("pixelcut")) == len(good)
    # Marketing asks for a square PNG: added in the trigger form, rendered for every photo, 0 calls.
    calls = len(sandbox.admin.requests("pixelcut"))
    square = {"name": "square", "format": "png", "aspect": "1:1", "background": "transparent"}
    renditions = [*bag_renditions(), square]
    later = dag_tester.run_file(
        BUCKET_DAG, "example_bucket_remove_background", conf={**conf, "renditions": renditions}
    )
    assert later.state == "success", later.task_states()
    counts = later.xcom("renditions")["renditions"]
    assert counts["square"]["done"] == len(good) and counts["thumb"]["skipped"] == len(good)
    assert len(sandbox.admin.charges("pixelcut")) == len(good)
    assert [r for r in sandbox.admin.requests("pixelcut")[calls:] if r["kind"] == "process"] == []


def test_generate_example_scene_and_prompt(env, dag_tester, pixelcut_pool, images_dir) -> None:
    sandbox, storage, cutouts, scenes = env
    horse = (images_dir / "horse.png").read_bytes()
    cut = {
        "cutouts/horse.png": horse,
        "cutouts/small/horse.png": encode(Image.open(images_dir / "horse.png").resize((200, 164)), "PNG"),
        # a WebP run of the remove example left the same stem: another format, left out (no collision)
        "cutouts/horse.webp": encode(Image.open(images_dir / "horse.png"), "WEBP"),
        "cutouts/_bgremoval/manifests/x/try-1.jsonl": b"{}\n",  # the provider's own files are excluded
        # ... even a PNG the include matches: the removal's run report writes its contact sheet there
        "cutouts/_bgremoval/reports/x/r/contact-sheet.png": horse,
    }
    seed(storage, cutouts, cut)
    conf = {
        "cutouts_bucket": cutouts,
        "cutouts_prefix": "cutouts/",
        "scenes_bucket": scenes,
        "scenes_prefix": "scenes/",
        "scene": "wood",
        "prompt": "on a beach at sunset",
    }
    run = dag_tester.run_file(GENERATE_DAG, "example_generate_background", conf=conf)
    assert run.state == "success", run.task_states()
    for folder in ("scenes/scene-wood/", "scenes/prompt/"):
        names = sorted(i.name for i in storage.list_objects(scenes, folder) if "_bgremoval/" not in i.name)
        assert names == [f"{folder}horse.jpg", f"{folder}small/horse.jpg"]
        for name in names:
            image = Image.open(io.BytesIO(storage.read(scenes, name)))
            assert image.format == "JPEG" and image.size == (1024, 1024)
    assert run.xcom("scene")["done"] == 2 and run.xcom("prompt")["done"] == 2
    generate_calls = [r for r in sandbox.admin.requests("pixelcut") if "generate" in r["endpoint"]]
    assert sorted(str(r["params"].get("scene")) for r in generate_calls).count("wood") == 2
    assert sum("beach" in str(r["params"].get("prompt")) for r in generate_calls) == 2
    assert sandbox.admin.total_charged("pixelcut") == 4
    rerun = dag_tester.run_file(GENERATE_DAG, "example_generate_background", conf=conf)
    assert rerun.state == "success"
    assert sandbox.admin.total_charged("pixelcut") == 4


def test_credit_monitor_example_passes_then_fails_and_notifies(
    vendor_connections, dag_tester, gcs_storage, gcs_client
) -> None:
    sandbox = vendor_connections
    if gcs_client.lookup_bucket("ops-credit-history") is None:  # the example's literal history bucket
        gcs_client.create_bucket("ops-credit-history")
    # the example's literal thresholds: pixelcut_default 100, pixian_default 50, poof_default 20
    ok = dag_tester.run_file(MONITOR_DAG, "example_credit_monitor")
    assert ok.state == "success", ok.task_states()
    balances = ok.xcom("check_balances")
    assert set(balances) == {"pixelcut_default", "pixian_default", "poof_default"}
    assert not any(b["low"] for b in balances.values())

    sandbox.admin.set_balance("poof", 5)
    low = dag_tester.run_file(MONITOR_DAG, "example_credit_monitor")
    assert low.state == "failed"
    alert = low.xcom("check_balances", key="low_balances")  # pushed by the notifier hook point
    assert [(a["conn_id"], a["remaining"], a["threshold"]) for a in alert] == [("poof_default", "5", "20")]
    # observed_at="data_interval_end": two runs in one hourly interval keep one reading
    forecast = alert[0]["forecast"]
    history = gcs_storage.read("ops-credit-history", "_credit_history/poof_default.jsonl").splitlines()
    assert forecast["remaining"] == "5" and forecast["samples"] == len(history)
    chart = name_of(alert[0]["chart"])
    assert gcs_storage.read("ops-credit-history", chart).startswith(b"\x89PNG")
    assert sandbox.admin.total_charged() == 0  # balance checks are free


def test_credit_monitor_example_forecasts_a_steady_spend_and_notifies_before_the_threshold(
    vendor_connections, airflow_db, gcs_storage, gcs_client
) -> None:
    """
    Poof spends 100 credits a simulated day from 1,000 (the sandbox's ``set_spend``, one
    ``advance_clock`` day per daily run of the example): far above its threshold of 20 all along,
    yet the notifier gets the forecast alert once the credits would run out within the example's
    7 days (600 left on day 4), and the task only warns.
    """
    from airflow.dag_processing.dagbag import DagBag

    sandbox = vendor_connections
    if gcs_client.lookup_bucket("ops-credit-history") is None:  # the example's literal history bucket
        gcs_client.create_bucket("ops-credit-history")
    for blob in gcs_client.list_blobs("ops-credit-history", prefix="_credit_history/"):  # its own history
        blob.delete()
    sandbox.admin.set_spend("poof", 100)
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / MONITOR_DAG.name  # dag.test() runs bundled DAGs
    path.write_text(MONITOR_DAG.read_text())
    alerts: dict[int, list[dict]] = {}
    try:
        dag = DagBag(dag_folder=str(path)).get_dag("example_credit_monitor")
        assert dag is not None
        for day in range(6):
            if day:
                sandbox.admin.advance_clock(86400)  # one simulated day of spend
            run = dag.test(logical_date=datetime(2026, 3, 1, 8, tzinfo=timezone.utc) + timedelta(days=day))
            assert str(run.state) == "success", day  # a forecast alone only warns
            result = DagRunResult(run, "example_credit_monitor")
            alerts[day] = result.xcom("check_balances", "low_balances") or []
    finally:
        path.unlink(missing_ok=True)
    assert sandbox.admin.get_balance("poof") == 500
    assert [day for day, entries in alerts.items() if entries] == [4, 5]  # 700 on day 3 last exactly 7 days
    [alert] = alerts[4]
    assert alert["conn_id"] == "poof_default" and alert["remaining"] == "600" and not alert["low"]
    forecast = alert["forecast"]
    assert (forecast["burn_rate"], forecast["days_left"], forecast["runs_out_on"]) == (
        "100",
        6.0,
        "2026-03-11",
    )
    assert forecast["alert"] is True and forecast["top_up"] == "100"  # 100 more credits cover the 7 days
    assert gcs_storage.read("ops-credit-history", name_of(alert["chart"])).startswith(b"\x89PNG")
    assert sandbox.admin.total_charged() == 0  # balance checks are free


def test_topup_sensor_example_waits_in_the_trigger_and_resumes(vendor_connections, airflow_db) -> None:
    """The deferrable sensor defers while the balance is low and resumes after a top-up."""
    import os

    from airflow.dag_processing.dagbag import DagBag

    sandbox = vendor_connections
    sandbox.admin.set_balance("pixelcut", 3)
    folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    path = folder / "example_credit_monitor_wait_for_topup.py"
    shutil.copy(MONITOR_DAG, path)
    timer = threading.Timer(2.0, sandbox.admin.set_balance, args=("pixelcut", 250))
    try:
        dag = DagBag(dag_folder=str(path)).get_dag("example_credit_monitor_wait_for_topup")
        dag.get_task("wait_for_topup").poke_interval = 0.5  # the example polls every 5 minutes
        timer.start()
        dag_run = dag.test(run_conf={"topup_conn_id": "pixelcut_default", "topup_min_credits": 200})
    finally:
        timer.cancel()
        path.unlink(missing_ok=True)
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert str(dag_run.state) == "success", states
    assert states == {"wait_for_topup": "success", "resume": "success"}
    assert sandbox.admin.get_balance("pixelcut") == 250
    polls = [r for r in sandbox.admin.requests("pixelcut") if "credits" in r["endpoint"]]
    assert len(polls) >= 2  # low at first, then met
    assert sandbox.admin.total_charged("pixelcut") == 0
