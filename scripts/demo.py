"""
``make demo``: the whole job offline — real photos from a bucket, through a vendor, into another bucket.

1. starts fake-gcs-server (memory backend) and the vendor sandbox on free ports;
2. creates two buckets and uploads the sample photos of ``tests/data/images`` plus derived variants
   and one deliberately broken file;
3. starts Airflow (``airflow standalone``: scheduler, DAG processor, triggerer, API server; LocalExecutor,
   SQLite) on ``example_dags/``, with the connections given as ``AIRFLOW_CONN_*`` environment
   variables (the example's chain: ``pixelcut_default`` first, then ``poof_default``), creates the
   ``pixelcut_api`` pool through the REST API;
4. run 1: triggers ``example_bucket_remove_background`` through the REST API with the demo's buckets as
   the run's params (:data:`RUN_CONF`) and follows it;
5. run 2: new photos arrive but both accounts are low (Pixelcut 2 credits, Poof 0) → the credits
   pre-flight halts the run before anything is spent (charge logs unchanged);
6. run 3: Poof topped up, Pixelcut still at 2 credits → Pixelcut makes 2 of the new photos, runs out,
   and Poof makes the third in the same task (failover; nothing is charged twice);
7. run 4: a plain rerun → everything skipped, 0 credits;
8. run 5: marketing asks for a new rendition (a square PNG), added in the run's conf → the DAG's
   ``renditions`` task renders it from the stored cut-outs for every photo: 0 vendor calls, 0 credits;
9. prints a report and copies the outputs, report and contact sheet to ``demo-output/``.

Every step is checked; the script exits non-zero when anything did not go as described, and stops
every process it started (also on Ctrl-C or SIGTERM). ``--quick`` runs the same flow with
``dag.test()`` in this process instead of the scheduler.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "tests" / "data" / "images"
DAGS = REPO / "example_dags"
DAG_ID = "example_bucket_remove_background"
POOL = "pixelcut_api"
SOURCE_BUCKET = "demo-raw"
DEST_BUCKET = "demo-cutouts"
SOURCE_PREFIX = "products/"
DEST_PREFIX = "cutouts/"
VENDOR = "pixelcut"
#: The example's secondary account: the batch fails over to it when Pixelcut cannot pay.
SECONDARY = "poof"
RENDITIONS_PREFIX = "renditions/"
#: Run 5's new rendition, added to the example's own list.
SQUARE = {"name": "square", "format": "png", "aspect": "1:1", "background": "transparent", "margin": "5%"}
#: Every run's trigger conf: the example DAG's params for the demo buckets (its connections are
#: ``pixelcut_default`` then ``poof_default``).
RUN_CONF: dict[str, Any] = {
    "source_bucket": SOURCE_BUCKET,
    "source_prefix": SOURCE_PREFIX,
    "destination_bucket": DEST_BUCKET,
    "destination_prefix": DEST_PREFIX,
    "max_shards": 3,
    "renditions_prefix": RENDITIONS_PREFIX,
}


class DemoFailure(Exception):
    """A step did not go as described."""


def say(text: str = "") -> None:
    """Print a line now (the demo's output is its user interface)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def check(condition: bool, message: str) -> None:
    """Fail the demo with ``message`` unless ``condition``."""
    if not condition:
        raise DemoFailure(message)


@contextmanager
def step(title: str) -> Iterator[None]:
    """A titled, timed step."""
    say(f"==> {title}")
    started = time.monotonic()
    yield
    say(f"    ok ({time.monotonic() - started:.1f} s)")


# -- sample data ------------------------------------------------------------------------------------
def _encode(image: Any, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def first_delivery() -> dict[str, bytes]:
    """The sample photos, a few derived variants and one broken upload."""
    from PIL import Image

    chelsea = Image.open(IMAGES / "chelsea.png").convert("RGB")
    horse = Image.open(IMAGES / "horse.png")
    coffee = Image.open(IMAGES / "coffee.png").convert("RGB")
    rocket = Image.open(IMAGES / "rocket.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise when displayed
    objects = {
        f"{SOURCE_PREFIX}{p.name}": p.read_bytes()
        for p in sorted(IMAGES.glob("*.*"))
        if p.suffix in (".png", ".jpg")
    }
    objects.update(
        {
            f"{SOURCE_PREFIX}variants/chelsea-small.webp": _encode(
                chelsea.resize((300, 200)), "WEBP", quality=85
            ),
            f"{SOURCE_PREFIX}variants/horse-gray.png": _encode(horse.convert("LA"), "PNG"),
            f"{SOURCE_PREFIX}variants/coffee-small.jpg": _encode(
                coffee.resize((300, 200)), "JPEG", quality=80
            ),
            f"{SOURCE_PREFIX}variants/rocket-exif-rotated.jpg": _encode(
                rocket.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=85, exif=exif
            ),
            # An upload that was cut off: rejected locally, never sent to the vendor, never charged.
            f"{SOURCE_PREFIX}broken-upload.jpg": (IMAGES / "rocket.jpg").read_bytes()[:2000],
        }
    )
    return objects


def second_delivery() -> dict[str, bytes]:
    """Tomorrow's photos."""
    from PIL import Image, ImageOps

    chelsea = Image.open(IMAGES / "chelsea.png").convert("RGB")
    astronaut = Image.open(IMAGES / "astronaut.jpg")
    horse = Image.open(IMAGES / "horse.png")
    return {
        f"{SOURCE_PREFIX}new/chelsea-mirrored.jpg": _encode(ImageOps.mirror(chelsea), "JPEG", quality=85),
        f"{SOURCE_PREFIX}new/astronaut-crop.png": _encode(astronaut.crop((60, 0, 460, 400)), "PNG"),
        f"{SOURCE_PREFIX}new/horse-small.webp": _encode(horse.resize((200, 164)), "WEBP", lossless=True),
    }


# -- runners ----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One DAG run."""

    run_id: str
    state: str
    task_states: dict[str, str | None]
    xcom: Callable[..., Any]
    seconds: float


class SchedulerRunner:
    """Runs the DAG under a real scheduler (``airflow standalone``) through the REST API."""

    name = "airflow standalone (scheduler + DAG processor + triggerer + API server, LocalExecutor)"

    def __init__(self, env: dict[str, str], work: Path) -> None:
        from airflow_provider_bgremoval.testing.standalone import AirflowStandalone

        shutil.rmtree(work / "airflow", ignore_errors=True)
        self.airflow = AirflowStandalone(DAGS, home=work / "airflow", env=env, startup_timeout=300)

    def start(self) -> None:
        self.airflow.start()
        api = self.airflow.client
        say(f"    Airflow API {self.airflow.url} (log: {self.airflow.log_path})")
        api.wait_for_dag(DAG_ID, timeout=180)
        api.set_pool(POOL, 2, description="Pixelcut API calls (demo)")
        api.unpause(DAG_ID)

    def run(self, conf: dict[str, Any]) -> Outcome:
        api = self.airflow.client
        started = time.monotonic()
        run_id = api.trigger(DAG_ID, conf)
        run = api.wait_for_run(DAG_ID, run_id, timeout=600)
        return Outcome(
            run_id=run_id,
            state=run["state"],
            task_states=api.task_states(DAG_ID, run_id),
            xcom=lambda task_id, key="return_value", map_index=-1: api.xcom(
                DAG_ID, run_id, task_id, key, map_index=map_index
            ),
            seconds=time.monotonic() - started,
        )

    def stop(self) -> None:
        self.airflow.stop()


class DagTestRunner:
    """Runs the DAG with ``dag.test()`` in this process (``make demo-quick``)."""

    name = "dag.test() in this process"

    def __init__(self, env: dict[str, str], work: Path) -> None:
        os.environ.update(env)  # connections and variables are read at run time

    @staticmethod
    def prepare(work: Path) -> None:
        """Point Airflow at a fresh home; must run before anything imports ``airflow``."""
        home = work / "airflow-quick"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        os.environ.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
            }
        )

    def start(self) -> None:
        from airflow.models.pool import Pool
        from airflow.utils import db

        db.initdb()
        Pool.create_or_update_pool(
            POOL, slots=2, description="Pixelcut API calls (demo)", include_deferred=False
        )

    def run(self, conf: dict[str, Any]) -> Outcome:
        from airflow.dag_processing.dagbag import DagBag
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        started = time.monotonic()
        bag = DagBag(dag_folder=str(DAGS / f"{DAG_ID}.py"))
        check(not bag.import_errors, f"import errors: {bag.import_errors}")
        dag = bag.get_dag(DAG_ID)
        assert dag is not None
        dag_run = dag.test(run_conf=conf)
        run_id = dag_run.run_id
        states = {
            (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): (
                None if ti.state is None else str(ti.state)
            )
            for ti in dag_run.get_task_instances()
        }

        def xcom(task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
            with create_session() as session:
                row = (
                    session.query(XComModel)
                    .filter_by(dag_id=DAG_ID, run_id=run_id, task_id=task_id, key=key, map_index=map_index)
                    .one_or_none()
                )
                return None if row is None else row.value

        return Outcome(
            run_id, str(dag_run.state), dict(sorted(states.items())), xcom, time.monotonic() - started
        )

    def stop(self) -> None:
        pass


# -- the demo ---------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What the demo saw, for the final report."""

    rows: list[str] = field(default_factory=list)


def connection_env(sandbox_url: str) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` for the three vendors, pointing at the sandbox (JSON form)."""
    from airflow_provider_bgremoval.sandbox.config import (
        DEFAULT_PIXELCUT_KEY,
        DEFAULT_PIXIAN_ID,
        DEFAULT_PIXIAN_SECRET,
        DEFAULT_POOF_KEY,
    )

    extra = {"timeout": 30, "max_retries": 3}
    conns = {
        "pixelcut_default": {"conn_type": "pixelcut", "host": sandbox_url, "password": DEFAULT_PIXELCUT_KEY},
        "pixian_default": {
            "conn_type": "pixian",
            "host": sandbox_url,
            "login": DEFAULT_PIXIAN_ID,
            "password": DEFAULT_PIXIAN_SECRET,
        },
        "poof_default": {"conn_type": "poof", "host": sandbox_url, "password": DEFAULT_POOF_KEY},
    }
    return {f"AIRFLOW_CONN_{cid.upper()}": json.dumps({**c, "extra": extra}) for cid, c in conns.items()}


def report_of(outcome: Outcome) -> dict[str, Any]:
    report = outcome.xcom("run_report")
    check(isinstance(report, dict), f"run {outcome.run_id}: no run report in XCom ({outcome.task_states})")
    return dict(report)


def expect_success(outcome: Outcome) -> None:
    bad = {k: v for k, v in outcome.task_states.items() if v != "success"}
    check(outcome.state == "success" and not bad, f"run {outcome.run_id} is {outcome.state}: {bad}")


def describe(label: str, outcome: Outcome, report: dict[str, Any] | None, charged: float) -> str:
    if report is None:
        return f"  {label:<34} {outcome.state:<8} charged {charged:g} credits  ({outcome.seconds:.0f} s)"
    c = report["counts"]
    return (
        f"  {label:<34} {outcome.state:<8} processed {c['done']:>2}  skipped {c['skipped']:>2}  "
        f"rejected {c['rejected']}  credits {report['credits_spent']:>2}  ({outcome.seconds:.0f} s)"
    )


def shown(path: Path) -> str:
    """
    ``path`` as the report prints it: relative to the working directory when inside it, else absolute.

    :param path: a file or folder (absolute or relative, existing or not).
    """
    absolute = Path(os.path.abspath(path))
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        return str(absolute)
    return str(relative) if relative.parts else "."


def outputs_under(storage: Any, bucket: str, prefix: str) -> Iterator[Any]:
    """
    The objects under ``prefix`` but not under its provider folder (``_bgremoval/``: claims, plans,
    manifests and reports of every past run), which the listing skips by name range.

    :param storage: the GCS storage.
    :param bucket: the bucket.
    :param prefix: a folder (ending with ``/``).
    """
    from airflow_provider_bgremoval.pipeline.naming import internal_prefix
    from airflow_provider_bgremoval.pipeline.planning import list_sources

    return list_sources(storage, bucket, prefix, skip=[internal_prefix(prefix)])


#: What the demo writes in its output folder; only these are replaced on the next run.
OUTPUT_ENTRIES = (
    DEST_PREFIX.rstrip("/"),
    RENDITIONS_PREFIX.rstrip("/"),
    "reports",
    "contact-sheet.png",
    "report.json",
)
#: The demo's list of the files it wrote in its output folder: only those are ever replaced.
OUTPUT_MARKER = ".bgremoval-demo-output"
DEFAULT_OUTPUT = REPO / "demo-output"


def _entry_files(out: Path) -> set[str]:
    """Every file now under the demo's entries of ``out``, relative to ``out``."""
    found: set[str] = set()
    for name in OUTPUT_ENTRIES:
        entry = out / name
        paths = [entry] if entry.is_file() or entry.is_symlink() else sorted(entry.rglob("*"))
        found.update(str(path.relative_to(out)) for path in paths if path.is_file() or path.is_symlink())
    return found


def _written_before(out: Path) -> set[str] | None:
    """The files the demo's last run wrote in ``out`` (its marker), ``None`` for an unmarked folder."""
    marker = out / OUTPUT_MARKER
    if not marker.is_file():
        return None
    return {line for line in marker.read_text().splitlines()[1:] if line}


def output_conflicts(out: Path) -> list[str]:
    """
    The files in the demo's entries of ``out`` that the demo did not write (empty: safe to use).

    The default ``demo-output/`` of a version without a marker is the demo's anyway.

    :param out: the ``--output`` folder, absolute.
    """
    written = _written_before(out)
    if written is None and out == DEFAULT_OUTPUT:
        return []
    return sorted(_entry_files(out) - (written or set()))


def clear_output(out: Path) -> None:
    """
    Remove the files an earlier demo run wrote in ``out``, nothing else (refused if others are there),
    and start this run's marker: an empty list that :func:`write_output` adds each file to as it lands.
    """
    conflicts = output_conflicts(out)
    check(not conflicts, f"{shown(out)} holds {', '.join(conflicts[:5])} the demo did not write")
    for name in sorted(_entry_files(out), reverse=True):
        (out / name).unlink()
    for name in OUTPUT_ENTRIES:  # the folders left empty
        folders = sorted((out / name).rglob("*"), reverse=True) if (out / name).is_dir() else []
        for folder in [*folders, out / name]:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).write_text(
        "written by scripts/demo.py: the next run replaces these files, nothing else\n"
    )


def write_output(out: Path, name: str, data: bytes) -> None:
    """
    Write ``name`` (relative, under one of :data:`OUTPUT_ENTRIES`) in ``out`` and list it in the marker
    first, so an interrupted copy leaves a folder the next run may clear, and nothing else is listed.
    """
    with (out / OUTPUT_MARKER).open("a") as marker:
        marker.write(f"{name}\n")
    target = out / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def download_outputs(storage: Any, out: Path, reports: list[str]) -> int:
    """Copy the cut-outs, their renditions and the run reports to ``out`` (``demo-output/``)."""
    clear_output(out)
    count = 0
    for info in outputs_under(storage, DEST_BUCKET, DEST_PREFIX):
        write_output(out, info.name, storage.read(DEST_BUCKET, info.name))
        count += 1
    for info in outputs_under(storage, DEST_BUCKET, RENDITIONS_PREFIX):  # not counted: cut-outs only
        write_output(out, info.name, storage.read(DEST_BUCKET, info.name))
    for index, uri in enumerate(reports, start=1):
        bucket, _, name = uri[5:].partition("/")
        folder = name.rsplit("/", 1)[0] + "/"
        for info in storage.list_objects(bucket, folder):
            target = f"reports/run-{index}/{info.name.rsplit('/', 1)[-1]}"
            write_output(out, target, storage.read(bucket, info.name))
    return count


@dataclass
class Demo:
    """What every run step works with: the runner, the sandbox's admin API, the storage, the record."""

    runner: SchedulerRunner | DagTestRunner
    admin: Any
    storage: Any
    good_first: int  # the first delivery's processable photos
    ledger: Ledger = field(default_factory=Ledger)
    reports: list[str] = field(default_factory=list)
    cost: float = 1.0  # the sandbox's Pixelcut remove-background price per image


def run_first_delivery(demo: Demo) -> Outcome:
    """Run 1: everything is processed but the broken upload; the batch is sharded."""
    admin, good_first, cost = demo.admin, demo.good_first, demo.cost
    first = demo.runner.run(RUN_CONF)
    expect_success(first)
    report = report_of(first)
    charged = admin.total_charged(VENDOR)
    say(f"    task states: {first.task_states}")
    check(admin.charges(SECONDARY) == [], "the secondary account was charged with the primary paid up")
    check(report["counts"]["done"] == good_first, f"expected {good_first} processed: {report['counts']}")
    check(report["counts"]["rejected"] == 1, f"expected 1 rejected (the broken upload): {report['counts']}")
    check(charged == good_first * cost, f"sandbox charged {charged}, expected {good_first * cost}")
    check(float(report["credits_spent"]) == charged, f"report says {report['credits_spent']} credits")
    check(bool(report["contact_sheet_uri"]), "no contact sheet was written")
    mapped = [k for k in first.task_states if k.startswith("remove_background[")]
    check(len(mapped) >= 2, f"expected the batch to be sharded: {first.task_states}")
    demo.ledger.rows.append(describe("1 first delivery", first, report, charged))
    demo.reports.append(report["report_uri"])
    return first


def run_low_balance_halt(demo: Demo) -> None:
    """Run 2: new photos, too few credits: the pre-flight halts before any billed call."""
    admin = demo.admin
    for name, data in second_delivery().items():
        demo.storage.write(SOURCE_BUCKET, name, data, content_type="application/octet-stream")
    admin.set_balance(VENDOR, 2)
    admin.set_balance(SECONDARY, 0)
    charges_before = len(admin.charges())
    billed_before = len([r for r in admin.requests() if r.get("charged")])
    halted = demo.runner.run(RUN_CONF)
    states = halted.task_states
    say(f"    task states: {states}")
    check(halted.state == "failed", f"the low-credit run should fail, it is {halted.state}")
    check(states.get("check_credits") == "failed", f"pre-flight did not halt: {states}")
    processed = any(k.startswith("remove_background") and v == "success" for k, v in states.items())
    check(not processed, f"images were processed despite the halt: {states}")
    halt = halted.xcom("check_credits", "halt")
    check(isinstance(halt, dict) and halt.get("reason") == "insufficient_credits", f"halt XCom: {halt}")
    check(len(admin.charges()) == charges_before, "the charge log changed during the halted run")
    billed_after = len([r for r in admin.requests() if r.get("charged")])
    check(billed_after == billed_before, "a billed vendor call was made during the halted run")
    pooled = {entry["conn_id"]: entry["available"] for entry in halt.get("accounts", [])}
    check(len(pooled) == 2, f"the halt does not price both accounts of the chain: {halt}")
    say(
        f"    halted before spending: need {halt['needed']} credits "
        f"for {halt['remaining_images']} image(s), {halt['available']} available "
        f"({', '.join(f'{conn} {credits}' for conn, credits in pooled.items())}); "
        f"charge logs unchanged ({charges_before} charges)"
    )
    demo.ledger.rows.append(describe("2 low balance: pre-flight halt", halted, None, 0))


def run_failover(demo: Demo, secondary_balance: float) -> None:
    """Run 3: Poof topped up, Pixelcut still at 2 credits: Pixelcut makes 2 new photos, Poof the third."""
    admin, good_first, cost = demo.admin, demo.good_first, demo.cost
    admin.set_balance(SECONDARY, secondary_balance)
    before = {vendor: len(admin.charges(vendor)) for vendor in (VENDOR, SECONDARY)}
    third = demo.runner.run(RUN_CONF)
    expect_success(third)
    report = report_of(third)
    made = {vendor: len(admin.charges(vendor)) - before[vendor] for vendor in (VENDOR, SECONDARY)}
    check(report["counts"]["done"] == 3, f"expected the 3 new photos processed: {report['counts']}")
    check(report["counts"]["skipped"] == good_first, f"expected {good_first} skipped: {report['counts']}")
    check(made == {VENDOR: 2, SECONDARY: 1}, f"expected 2 on {VENDOR} and 1 on {SECONDARY}: {made}")
    check(float(report["credits_spent"]) == 3 * cost, f"run 3 spent {report['credits_spent']}")
    say(f"    {VENDOR} made {made[VENDOR]} and ran out; {SECONDARY} made {made[SECONDARY]} in the same task")
    demo.ledger.rows.append(describe(f"3 failover: {VENDOR} -> {SECONDARY}", third, report, 3 * cost))
    demo.reports.append(report["report_uri"])


def run_rerun(demo: Demo) -> None:
    """Run 4: a plain rerun: everything is skipped, 0 credits."""
    admin = demo.admin
    before = admin.total_charged()
    charges_before = len(admin.charges())
    fourth = demo.runner.run(RUN_CONF)
    expect_success(fourth)
    report = report_of(fourth)
    spent = admin.total_charged() - before
    check(report["counts"]["done"] == 0, f"a rerun processed images: {report['counts']}")
    check(report["counts"]["skipped"] == demo.good_first + 3, f"expected all skipped: {report['counts']}")
    check(spent == 0 and len(admin.charges()) == charges_before, f"the rerun charged {spent}")
    demo.ledger.rows.append(describe("4 rerun", fourth, report, spent))


def run_new_rendition(demo: Demo) -> None:
    """Run 5: a new rendition in the run's conf: rendered from the stored cut-outs, 0 vendor calls."""
    import runpy

    admin = demo.admin
    before, charges_before = admin.total_charged(), len(admin.charges())
    calls_before = len([r for r in admin.requests() if r.get("kind") == "process"])
    example = runpy.run_path(str(DAGS / f"{DAG_ID}.py"))
    renditions = [*example["RENDITIONS"], SQUARE]
    fifth = demo.runner.run({**RUN_CONF, "renditions": renditions})
    expect_success(fifth)
    summary = fifth.xcom("renditions")
    check(isinstance(summary, dict), f"no renditions summary in XCom ({fifth.task_states})")
    counts = summary["renditions"]
    photos = demo.good_first + 3
    spent = admin.total_charged() - before
    calls = len([r for r in admin.requests() if r.get("kind") == "process"]) - calls_before
    check(counts["square"]["done"] == photos, f"expected {photos} square renditions: {counts['square']}")
    check(spent == 0 and len(admin.charges()) == charges_before, f"the new rendition charged {spent}")
    check(calls == 0, f"{calls} vendor call(s) for a rendition")
    check(summary["credits_spent"] == "0", f"renditions summary says {summary['credits_spent']} credits")
    for name in (r["name"] for r in example["RENDITIONS"]):
        say(f"    {name}: {counts[name]}")
    if counts["amazon"]["rejected"]:
        say("    (amazon: the sample photos are below Amazon's 1,000 px minimum: reported, never written)")
    say(f"    square: {counts['square']['done']} rendered from the stored cut-outs, {calls} vendor calls")
    demo.ledger.rows.append(
        f"  {'5 new rendition: square':<34} {fifth.state:<8} rendered {counts['square']['done']:>2}  "
        f"vendor calls {calls}  credits {spent:g}  ({fifth.seconds:.0f} s)"
    )


def copy_outputs(demo: Demo, out: Path) -> int:
    """Copy the cut-outs, the reports and the first run's contact sheet to ``demo-output/``."""
    copied = download_outputs(demo.storage, out, demo.reports)
    sheet = out / "reports" / "run-1" / "contact-sheet.png"
    check(sheet.is_file(), f"{sheet} missing")
    write_output(out, "contact-sheet.png", sheet.read_bytes())
    write_output(out, "report.json", (out / "reports" / "run-1" / "report.json").read_bytes())
    check(copied == demo.good_first + 3, f"expected {demo.good_first + 3} outputs, found {copied}")
    return copied


def print_report(demo: Demo, first: Outcome, out: Path, copied: int, seconds: float) -> None:
    """The final report: the runs, the sandbox's charge log and where the outputs are."""
    admin = demo.admin
    total_charges = admin.charges()  # both accounts of the chain
    rel = shown(out)
    say("")
    say(f"Demo report ({demo.runner.name}; {seconds:.0f} s in all)")
    say(
        f"  source gs://{SOURCE_BUCKET}/{SOURCE_PREFIX} -> gs://{DEST_BUCKET}/{DEST_PREFIX} "
        f"via {VENDOR}, then {SECONDARY} (sandbox)"
    )
    for row in demo.ledger.rows:
        say(row)
    say(
        f"  sandbox charge log: {len(total_charges)} charges, "
        f"{admin.total_charged():g} credits ({len(admin.charges(VENDOR))} {VENDOR}, "
        f"{len(admin.charges(SECONDARY))} {SECONDARY}) for "
        f"{demo.good_first + 3} distinct images: none charged twice; the broken upload was never sent"
    )
    say(f"  outputs:       {rel}/{DEST_PREFIX} ({copied} cut-outs)")
    say(f"  renditions:    {rel}/{RENDITIONS_PREFIX}<name>/ (shopify, thumb, square; amazon refused)")
    say(
        f"  contact sheet: {rel}/contact-sheet.png  "
        f"(in the bucket: {first.xcom('run_report')['contact_sheet_uri']})"
    )
    say(f"  run report:    {rel}/report.json; all runs' reports under {rel}/reports/")
    say(f"  manifests:     gs://{DEST_BUCKET}/{DEST_PREFIX}_bgremoval/manifests/{DAG_ID}/...")
    check(len(total_charges) == demo.good_first + 3, "the charge log does not match the processed images")


def run_demo(quick: bool, work: Path, out: Path) -> None:
    from airflow_provider_bgremoval.sandbox.testing import run_sandbox
    from airflow_provider_bgremoval.testing.gcs_emulator import FakeGcsServer

    total_started = time.monotonic()
    with ExitStack() as stack:
        with step("Starting fake-gcs-server (memory backend) and the vendor sandbox on free ports"):
            gcs = stack.enter_context(FakeGcsServer(log_path=work / "fake-gcs-server.log"))
            sandbox_log = logging.getLogger("airflow_provider_bgremoval.sandbox")
            sandbox_log.addHandler(logging.FileHandler(work / "sandbox.log"))
            sandbox_log.propagate = False  # its request log goes to .demo/sandbox.log, not the report
            sandbox = stack.enter_context(run_sandbox())
            say(f"    fake-gcs-server {gcs.url} (pid {gcs.pid}); sandbox {sandbox.url}")
        env = {**gcs.env(), **connection_env(sandbox.url)}
        os.environ.update(gcs.env())

        from airflow_provider_bgremoval.storage.gcs import GcsStorage

        storage = GcsStorage(gcp_conn_id=None)
        with step(f"Creating buckets gs://{SOURCE_BUCKET}, gs://{DEST_BUCKET} and uploading sample photos"):
            gcs.create_bucket(SOURCE_BUCKET)
            gcs.create_bucket(DEST_BUCKET)
            delivery = first_delivery()
            for name, data in delivery.items():
                storage.write(SOURCE_BUCKET, name, data, content_type="application/octet-stream")
            say(
                f"    {len(delivery)} objects under gs://{SOURCE_BUCKET}/{SOURCE_PREFIX} "
                "(1 broken on purpose)"
            )

        runner: SchedulerRunner | DagTestRunner = (
            DagTestRunner(env, work) if quick else SchedulerRunner(env, work)
        )
        with step(f"Starting Airflow: {runner.name}"):
            stack.callback(runner.stop)
            runner.start()

        demo = Demo(runner=runner, admin=sandbox.admin, storage=storage, good_first=len(delivery) - 1)
        secondary_balance = demo.admin.get_balance(SECONDARY)
        with step(f"Run 1: trigger {DAG_ID} and follow it to completion"):
            first = run_first_delivery(demo)
        with step(f"Run 2: three new photos arrive, but {VENDOR} holds 2 credits and {SECONDARY} 0"):
            run_low_balance_halt(demo)
        with step(f"Run 3: {SECONDARY} topped up, {VENDOR} still at 2 credits: the batch fails over"):
            run_failover(demo, secondary_balance)
        with step("Run 4: rerun: everything is skipped, 0 credits"):
            run_rerun(demo)
        with step("Run 5: marketing asks for a square rendition of every photo"):
            run_new_rendition(demo)
        with step(f"Copying outputs, reports and the contact sheet to {shown(out)}/"):
            copied = copy_outputs(demo, out)
        print_report(demo, first, out, copied, time.monotonic() - total_started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--quick", action="store_true", help="dag.test() instead of a real scheduler")
    parser.add_argument("--work", type=Path, default=REPO / ".demo", help="scratch folder (default .demo/)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where outputs are copied")
    args = parser.parse_args(argv)
    conflicts = output_conflicts(args.output.resolve())
    if conflicts:  # refused before anything runs: the demo never replaces what it did not write
        held = ", ".join(conflicts[:5]) + (" ..." if len(conflicts) > 5 else "")
        parser.error(f"--output {shown(args.output)} holds {held}, not written by the demo")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(work)  # keep scratch files (emulator logs) out of /tmp clutter

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    if args.quick:
        DagTestRunner.prepare(work)
    started = time.monotonic()
    try:
        run_demo(args.quick, work, args.output.resolve())
    except DemoFailure as exc:
        say(f"\nDEMO FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("\nInterrupted: every process the demo started has been stopped.")
        return 130
    except Exception as exc:  # anything unexpected is a failed demo too (processes are stopped)
        traceback.print_exc()
        say(f"\nDEMO FAILED: {type(exc).__name__}: {exc}")
        return 1
    say(f"\nDemo finished in {time.monotonic() - started:.0f} s: every step went as described.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
