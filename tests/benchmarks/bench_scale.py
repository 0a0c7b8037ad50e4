"""Scale benchmark of the example DAG (``make bench``'s scale section; figures, not a test).

Run ``python -m tests.benchmarks.bench_scale [--quick] [--baseline-rev REV]``. fake-gcs-server (filesystem
backend) logs every request it serves (``-log-level info``); the figures count those lines, so they are
exact and include everything the DAG run does (listings, reads, claims, outputs, manifests, plan chunks,
the report). Each DAG run is ``dag.test()`` of ``example_dags/example_bucket_remove_background.py`` in
its own client process (:mod:`.bench_dag`) against the vendor sandbox (Pixelcut, no latency, no rate
limit, the connection's request pacing off).

1. GCS requests per source image: first run, no-op rerun, and a rerun with 1 % new images spread over the
   listing, at N = 1,000 and 10,000 (quick: 1,000); and the planning task's time per 1,000 sources.
2. Time to first paid call for a big prefix (100,000; quick 10,000): from ``dag.test()`` start to the
   sandbox's first charge, per 1,000 sources.
3. Planning peak RSS of a bucket task handed a 1,000-image shard (explicit ``source_objects``) whose
   destination prefix already holds 100,000 outputs (quick 10,000).

``--baseline-rev`` measures 1–3 also for an older checkout (a ``git worktree``) in the same run, so the
ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from tests.benchmarks.bench_pipeline import (
    REPO,
    Seeder,
    client_env,
    fake_gcs_server,
    load,
    sandbox_server,
    say,
    small_shot,
)

DAG_FILE = "example_dags/example_bucket_remove_background.py"
DAG_ID = "example_bucket_remove_background"
MAX_SHARDS = 4
#: The goals of issue "Scale" (GCS requests per source image).
GOALS = {"first": 4.0, "noop": 0.03, "plus1": 0.08}
_REQUEST = re.compile(r'\\"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.1\\" (?P<status>\d{3})')


@dataclass(frozen=True)
class Checkout:
    """The provider code a client runs: this repository, or a baseline worktree."""

    key: str
    label: str
    root: Path

    @property
    def dag_file(self) -> Path:
        return self.root / DAG_FILE


def classify(method: str, path: str, status: str) -> str:
    """The kind of one GCS JSON API request."""
    route = path.split("?", 1)[0]
    if route.startswith("/upload/"):
        return "upload"
    if route.startswith("/download/") or "alt=media" in path:
        return "ranged read" if status == "206" else "read"
    if method == "DELETE":
        return "delete"
    if method in ("PATCH", "PUT"):
        return "update"
    if route.endswith("/o"):
        return "list"
    if "/o/" in route:
        return "copy" if method == "POST" else "metadata"
    return "bucket"


def requests_between(log: Path, start: int, end: int) -> Counter[str]:
    """The GCS requests fake-gcs-server logged between two byte offsets of its log."""
    with log.open("rb") as handle:
        handle.seek(start)
        text = handle.read(end - start).decode(errors="replace")
    return Counter(classify(m["method"], m["path"], m["status"]) for m in _REQUEST.finditer(text))


class Bench:
    """The servers, the seeder and the client runs of one benchmark run."""

    def __init__(self, workdir: Path, gcs_url: str, sandbox_url: str) -> None:
        self.workdir = workdir
        self.log = workdir / "fake-gcs-server.log"
        self.seeder = Seeder(gcs_url, threads=8)
        self.sandbox = httpx.Client(base_url=sandbox_url, timeout=60, trust_env=False)
        self.env = client_env(workdir, gcs_url, sandbox_url)
        # Request counts, not the vendor's pace, are measured: the sandbox has no rate limit, no pacing.
        conn = json.loads(self.env["AIRFLOW_CONN_PIXELCUT_DEFAULT"])
        conn["extra"]["requests_per_second"] = 0
        self.env["AIRFLOW_CONN_PIXELCUT_DEFAULT"] = json.dumps(conn)
        self.dags_folder = self.env["AIRFLOW__CORE__DAGS_FOLDER"]
        self.runs = 0

    def _command(
        self, checkout: Checkout, mode: str, result: Path, *args: str
    ) -> tuple[list[str], dict[str, str]]:
        env = dict(self.env, PYTHONPATH=str(checkout.root))
        script = REPO / "tests" / "benchmarks" / "bench_dag.py"
        return [sys.executable, str(script), mode, "--result", str(result), *args], env

    def _dag_args(self, checkout: Checkout, conf: dict[str, Any]) -> list[str]:
        self.runs += 1
        args = ["--file", str(checkout.dag_file), "--dag-id", DAG_ID, "--conf", json.dumps(conf)]
        args += ["--dags-folder", self.dags_folder]
        return args + (["--init-db"] if self.runs == 1 else [])

    def run_dag(self, checkout: Checkout, conf: dict[str, Any], name: str) -> dict[str, Any]:
        """One DAG run; its figures and the GCS requests it made."""
        result = self.workdir / f"{name}.json"
        command, env = self._command(checkout, "dag", result, *self._dag_args(checkout, conf))
        before = self.log.stat().st_size
        with (self.workdir / f"{name}.log").open("wb") as out:
            code = subprocess.call(command, env=env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT)
        time.sleep(0.2)  # the server's last log lines
        if code:
            tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"DAG run {name} failed ({code}):\n{tail}")
        figures: dict[str, Any] = json.loads(result.read_text())
        if figures["state"] != "success":
            raise RuntimeError(f"DAG run {name}: {figures['state']} {figures['tasks']}")
        figures["requests"] = dict(requests_between(self.log, before, self.log.stat().st_size))
        return figures

    def charges_since(self, since: float) -> list[float]:
        """Timestamps of the sandbox's charges at or after ``since``."""
        charges = self.sandbox.get("/_sandbox/charges", params={"vendor": "pixelcut"}).json()
        rows = charges.get("charges", charges) if isinstance(charges, dict) else charges
        return sorted(row["timestamp"] for row in rows if row["timestamp"] >= since)

    def first_paid_call(self, checkout: Checkout, conf: dict[str, Any], name: str) -> dict[str, float]:
        """
        Seconds to the first charge from ``dag.test()``'s start and from the planning task's start (the
        same under a scheduler, without ``dag.test()``'s one-time start-up); the source listing pages
        the run made before it. The run is stopped at the first charge.
        """
        result = self.workdir / f"{name}.json"
        command, env = self._command(checkout, "dag", result, *self._dag_args(checkout, conf))
        before = self.log.stat().st_size
        with (self.workdir / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            paid: list[float] = []
            while not paid:
                time.sleep(0.25)
                if process.poll() is not None and process.returncode:
                    raise RuntimeError(f"{name} failed: {(self.workdir / f'{name}.log').read_text()[-3000:]}")
                started = json.loads(result.read_text())["started"] if result.exists() else None
                paid = [] if started is None else self.charges_since(started)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
        source = re.escape(conf["source_bucket"])
        text = self.log.read_bytes()[before:].decode(errors="replace")
        return {
            "from_dag_start": paid[0] - started,
            "from_planning_start": paid[0] - self.planning_started(),
            "source_list_pages": len(re.findall(rf'\\"GET /storage/v1/b/{source}/o\?', text)),
        }

    def planning_started(self) -> float:
        """When the newest planning task started (Airflow's metadata DB)."""
        database = self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
        with sqlite3.connect(database) as db:
            query = "SELECT start_date FROM task_instance WHERE task_id = 'check_credits'"
            query += " ORDER BY start_date DESC"
            (value,) = db.execute(query).fetchone()
        moment = datetime.fromisoformat(str(value))
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()

    def plan_rss(self, checkout: Checkout, bucket: str, dst: str, objects: Path, name: str) -> dict[str, Any]:
        """A bucket task's planning of a shard (explicit names) and its peak RSS."""
        result = self.workdir / f"{name}.json"
        args = ["--objects", str(objects), "--bucket", bucket, "--prefix", "incoming/", "--dst-bucket", dst]
        command, env = self._command(checkout, "plan", result, *args, "--dst-prefix", "cutouts/")
        before = self.log.stat().st_size
        subprocess.check_call(
            command, env=env, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        figures: dict[str, Any] = json.loads(result.read_text())
        figures["requests"] = dict(requests_between(self.log, before, self.log.stat().st_size))
        return figures


#: The example DAG's renditions task renders the PNG cut-outs only: WebP cut-outs leave it idle (it
#: lists the cut-outs, finds no PNG and stores its manifest), which measures the bucket tasks alone.
NO_RENDITIONS = {"output_format": "webp"}


def conf_for(src: str, dst: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "source_bucket": src,
        "source_prefix": "incoming/",
        "destination_bucket": dst,
        "destination_prefix": "cutouts/",
        "max_shards": MAX_SHARDS,
        "output_format": "png",
        **(extra or {}),
    }


def image_names(numbers: range) -> list[str]:
    return [f"incoming/img{i:07d}.png" for i in numbers]


def planning_s(figures: dict[str, Any]) -> float:
    """Wall time of the planning tasks (the pre-flight; the old listing task too)."""
    return sum(
        t["duration_s"] or 0 for t in figures["tasks"] if t["task_id"] in ("check_credits", "list_shards")
    )


def measure_requests(
    bench: Bench, checkout: Checkout, count: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """First run, no-op rerun and +1 % rerun of ``count`` images (``extra``: more DAG params)."""
    tag = f"{checkout.key}-{count}" + ("-" + "-".join(map(str, extra.values())) if extra else "")
    src, dst = bench.seeder.bucket(f"raw-{tag}"), bench.seeder.bucket(f"cut-{tag}")
    bench.seeder.upload(src, image_names(range(0, 2 * count, 2)), small_shot, "image/png")
    say(f"{checkout.label}: first run of {count:,} images {extra or ''}")
    first = bench.run_dag(checkout, conf_for(src, dst, extra), f"{tag}-first")
    say(f"{checkout.label}: no-op rerun")
    noop = bench.run_dag(checkout, conf_for(src, dst, extra), f"{tag}-noop")
    new = image_names(range(1, 2 * count, 200))  # 1 %, spread over the listing
    bench.seeder.upload(src, new, small_shot, "image/png")
    say(f"{checkout.label}: rerun with {len(new)} new images")
    plus1 = bench.run_dag(checkout, conf_for(src, dst, extra), f"{tag}-plus1")
    return {"count": count, "new": len(new), "first": first, "noop": noop, "plus1": plus1}


def listing_page_seconds(bench: Bench, bucket: str, count: int) -> float:
    """fake-gcs-server's time per listing page (1,000 names) of a bucket of ``count`` objects."""
    started = time.perf_counter()
    listed = bench.seeder.count(bucket, "incoming/")
    assert listed == count, (listed, count)
    return (time.perf_counter() - started) / max(1, math.ceil(count / 1000))


def measure_first_call(bench: Bench, checkouts: list[Checkout], count: int) -> dict[str, Any]:
    """
    Time to the first paid call over a prefix of ``count`` images, per checkout (same sources).

    fake-gcs-server reads every object of a bucket for each listing page, so a page of a 100,000-object
    bucket costs seconds where GCS answers in ~0.1 s; the figures are also given with each source listing
    page at the cost of a page of a 1,000-object bucket (both measured here).
    """
    src, small = bench.seeder.bucket("raw-big"), bench.seeder.bucket("raw-page")
    say(f"seeding {count:,} images for the time to first paid call")
    bench.seeder.upload(src, image_names(range(count)), small_shot, "image/png")
    bench.seeder.upload(small, image_names(range(1000)), small_shot, "image/png")
    page = {"big": listing_page_seconds(bench, src, count), "small": listing_page_seconds(bench, small, 1000)}
    runs: dict[str, Any] = {"page_s": page}
    for checkout in checkouts:
        dst = bench.seeder.bucket(f"cut-big-{checkout.key}")
        say(f"{checkout.label}: time to first paid call over {count:,} sources")
        run = bench.first_paid_call(checkout, conf_for(src, dst), f"{checkout.key}-ttfpc")
        run["listing_compensated"] = run["from_planning_start"] - run["source_list_pages"] * (
            page["big"] - page["small"]
        )
        runs[checkout.label] = run
        say(f"  {run}")
    return runs


def measure_rss(bench: Bench, checkouts: list[Checkout], prefix_size: int) -> dict[str, Any]:
    """Planning RSS of a 1,000-image shard inside a destination that holds ``prefix_size`` outputs."""
    shard = range(prefix_size // 2, prefix_size // 2 + 1000)
    src, dst = bench.seeder.bucket("raw-shard"), bench.seeder.bucket("cut-shard")
    bench.seeder.upload(src, image_names(shard), small_shot, "image/png")
    others = [f"cutouts/img{i:07d}.png" for i in range(prefix_size) if i not in shard]
    say(f"seeding {len(others):,} outputs of other sources into the destination prefix")
    bench.seeder.upload(dst, others, lambda _: b"x", "image/png")
    objects = bench.workdir / "shard.txt"
    objects.write_text("\n".join(name.removeprefix("incoming/") for name in image_names(shard)))
    return {c.label: bench.plan_rss(c, src, dst, objects, f"{c.key}-rss") for c in checkouts}


@contextmanager
def baseline_checkout(workdir: Path, rev: str | None) -> Iterator[Checkout | None]:
    """A ``git worktree`` of ``rev`` (``None``: no baseline)."""
    if rev is None:
        yield None
        return
    root = workdir / "baseline"
    subprocess.check_call(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(root), rev], stdout=subprocess.DEVNULL
    )
    try:
        yield Checkout("baseline", f"baseline {rev}", root)
    finally:
        subprocess.call(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root)])


def per_image(figures: dict[str, Any], images: int) -> float:
    return sum(figures["requests"].values()) / images


def report(meta: dict[str, Any], results: dict[str, Any]) -> str:
    """The figure table."""
    lines = ["=" * 100, "Scale benchmark: the example DAG under dag.test(), every GCS request counted"]
    add = lines.append
    add(f"host: {meta['cpus']} CPUs; load {meta['load_start']} -> {meta['load_end']}")
    add(f"total {meta['total_s']:.0f} s")
    add("")
    if results.get("requests"):
        lines += requests_lines(results)
    if "first_call" in results:
        lines += first_call_lines(meta, results)
    if "rss" in results:
        lines += rss_lines(meta, results)
    add("=" * 100)
    return "\n".join(lines)


def requests_lines(results: dict[str, Any]) -> list[str]:
    """Section 1: GCS requests per source image."""
    lines: list[str] = []
    add = lines.append
    add("1. GCS requests per source image (exact: fake-gcs-server's request log)")
    header = f"{'code':26}{'N':>8}{'first run':>11}{'no-op':>9}{'+1 %':>9}{'plan s/1,000':>14}"
    add(f"   {header}   kinds (first run)")
    for label, sizes in results["requests"].items():
        for row in sizes:
            n = row["count"]
            first, noop, plus1 = (per_image(row[k], n) for k in ("first", "noop", "plus1"))
            kinds = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(row["first"]["requests"].items()))
            add(
                f"   {label:26}{n:>8,}{first:>11.3f}{noop:>9.4f}{plus1:>9.4f}"
                f"{planning_s(row['first']) / n * 1000:>14.2f}   {kinds}"
            )
    goals = f"first run <= {GOALS['first']}, no-op rerun <= {GOALS['noop']}, +1 % <= {GOALS['plus1']}"
    add(f"   goals: {goals}")
    add("   ¹ WebP cut-outs: the renditions task (PNG cut-outs only) idles; the bucket tasks alone")
    add("")
    return lines


def first_call_lines(meta: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """Section 2: time to first paid call."""
    lines: list[str] = []
    add = lines.append
    runs = dict(results["first_call"])
    page = runs.pop("page_s")
    count = meta["first_call_sources"]
    add(f"2. Time to first paid call over {count:,} sources (per 1,000 sources in brackets)")
    add(
        f"   fake-gcs-server lists a page of this bucket in {page['big']:.2f} s, of a 1,000-object bucket in "
        f"{page['small']:.3f} s (it reads the whole bucket per page; GCS does not)"
    )
    add(f"   {'code':26}{'from dag.test() start':>24}{'from planning start':>24}{'listing compensated':>24}")
    for label, run in runs.items():
        cells = [run[key] for key in ("from_dag_start", "from_planning_start", "listing_compensated")]
        text = "".join(f"{value:>10.1f} s ({value / count * 1000:.3f})" for value in cells)
        add(f"   {label:26}{text}   source list pages {run['source_list_pages']}")
    if len(runs) == 2:
        old, new = runs.values()
        ratios = [
            old[key] / new[key] for key in ("from_dag_start", "from_planning_start", "listing_compensated")
        ]
        add(f"   shorter by {' / '.join(f'{r:.1f}x' for r in ratios)} (goal: at least 5x)")
    add("")
    return lines


def rss_lines(meta: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """Section 3: planning RSS of a shard in a big destination."""
    lines: list[str] = []
    add = lines.append
    add(f"3. Planning peak RSS of a 1,000-image shard, destination prefix of {meta['rss_prefix']:,} outputs")
    for label, figures in results["rss"].items():
        over = figures["peak_rss_mb"] - figures["baseline_rss_mb"]
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(figures["requests"].items()))
        wall = figures["plan_wall_s"]
        add(f"   {label:26}{over:>7.1f} MB above baseline, {wall:.2f} s; GCS requests: {kinds}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the table."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 1,000 only; 10,000-object big prefixes")
    parser.add_argument("--baseline-rev", default=None, help="also measure this git revision (a worktree)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--only", choices=("requests", "first-call", "rss"), action="append", help="run only these parts"
    )
    args = parser.parse_args(argv)
    parts = set(args.only or ("requests", "first-call", "rss"))
    sizes = (1000,) if args.quick else (1000, 10_000)
    big = 10_000 if args.quick else 100_000
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_start": load(),
        "first_call_sources": big,
        "rss_prefix": big,
    }
    workdir = Path(tempfile.mkdtemp(prefix="bgremoval-scale-"))
    results: dict[str, Any] = {"requests": {}}
    try:
        with (
            fake_gcs_server(workdir, "filesystem", log_level="info") as (gcs_url, _),
            sandbox_server(workdir) as (sandbox_url, _),
            baseline_checkout(workdir, args.baseline_rev) as baseline,
        ):
            bench = Bench(workdir, gcs_url, sandbox_url)
            checkouts = [c for c in (baseline, Checkout("current", "this checkout", REPO)) if c is not None]
            for checkout in checkouts if "requests" in parts else []:
                results["requests"][checkout.label] = [measure_requests(bench, checkout, n) for n in sizes]
            if "requests" in parts:  # the bucket tasks alone: the renditions task idle (WebP cut-outs)
                current = checkouts[-1]
                label = f"{current.label}, WebP¹"
                results["requests"][label] = [
                    measure_requests(bench, current, n, NO_RENDITIONS) for n in sizes
                ]
            if "first-call" in parts:
                results["first_call"] = measure_first_call(bench, checkouts, big)
            if "rss" in parts:
                results["rss"] = measure_rss(bench, checkouts, big)
        meta["load_end"] = load()
        meta["total_s"] = time.perf_counter() - started
        print(report(meta, results))
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
