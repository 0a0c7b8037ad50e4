"""Benchmark of the bucket pipeline: throughput, memory and CPU (``make bench``; figures, not a test).

Run ``python -m tests.benchmarks.bench_pipeline [--quick]``. Everything runs on this machine, each
part in its own process so that no two share a GIL:

* fake-gcs-server (its **filesystem** backend in a temporary directory: the memory backend keeps
  every object in RAM — 10 GB for the memory run — and scans a bucket's objects on every request,
  so it slows down as a bucket fills; see ``docs/benchmarks.md``);
* the vendor sandbox (``python -m airflow_provider_bgremoval.sandbox``) with a fixed 200 ms latency
  on Poof and Pixian, no jitter, no rate limit, no fault rules;
* one client process per measurement (:mod:`.bench_client`): the pipeline as the operator runs it,
  or the naive loop a user writes in a ``PythonOperator``.

Measurements (see ``docs/benchmarks.md`` for the method and the analysis):

1. images/s for 1,000 small studio shots through Poof at ``max_concurrency=16`` against the ideal
   16 / 0.2 s = 80 images/s, and the naive sequential loop on 50 of them;
2. peak RSS of the client for 2,000 and 10,000 JPEGs of ~1.2 MB (Pixian with ``max_pixels=10000`` so
   the sandbox segments a small copy; the client still downloads, decodes, sends and handles the
   full image), against the baseline RSS after Airflow, the provider, the hook and the storage
   client are loaded;
3. client CPU per image (process CPU time of the client during execution / images), with the
   sandbox's and fake-gcs-server's CPU per image beside it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import httpx
import psutil
from PIL import Image, ImageDraw

from airflow_provider_bgremoval.sandbox.config import (
    DEFAULT_PIXELCUT_KEY,
    DEFAULT_PIXIAN_ID,
    DEFAULT_PIXIAN_SECRET,
    DEFAULT_POOF_KEY,
)
from airflow_provider_bgremoval.testing.gcs_emulator import find_fake_gcs_server_binary

REPO = Path(__file__).resolve().parents[2]
LATENCY_MS = 200
CONCURRENCY = 16
IDEAL = CONCURRENCY / (LATENCY_MS / 1000)
RSS_GOAL_MB = 200.0
FLAT_MB_PER_1000 = 2.0
THROUGHPUT_GOAL = 0.95
BIG_SIZE = (1200, 900)
BIG_VARIANTS = 24


@dataclass(frozen=True)
class Sizes:
    """How many images each measurement uses."""

    small: int
    naive: int
    big_a: int  # the smaller memory run
    big_total: int  # the larger memory run (big_a of them are shared with the smaller run)


FULL = Sizes(small=1000, naive=50, big_a=2000, big_total=10000)
QUICK = Sizes(small=200, naive=10, big_a=200, big_total=1000)


def say(message: str) -> None:
    """Progress on stderr (the figure table goes to stdout)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- servers ---------------------------------------------------------------------------------------
@contextmanager
def fake_gcs_server(
    workdir: Path, backend: str, log_level: str = "warn"
) -> Iterator[tuple[str, psutil.Process]]:
    """fake-gcs-server in its own process; yields its URL and process (``info`` logs every request)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    root = workdir / "gcs-root"
    log = (workdir / "fake-gcs-server.log").open("ab")
    command = [
        find_fake_gcs_server_binary(),
        "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
        "-backend", backend, "-filesystem-root", str(root),
        "-public-host", address, "-external-url", f"http://{address}",
        "-log-level", log_level,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/storage/v1/b", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake-gcs-server did not start (log: {log.name})")
            time.sleep(0.05)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def sandbox_config() -> dict[str, Any]:
    """Fixed 200 ms latency on Poof and Pixian, no jitter, no limits, no faults; ample credits."""
    latency = {"latency_ms": LATENCY_MS, "jitter_ms": 0, "rate_limit_rps": None, "max_concurrency": None}
    return {
        "keys": {
            "pixelcut": {DEFAULT_PIXELCUT_KEY: 10_000_000},
            "pixian": {DEFAULT_PIXIAN_ID: {"secret": DEFAULT_PIXIAN_SECRET, "credits": 10_000_000}},
            "poof": {DEFAULT_POOF_KEY: 10_000_000},
        },
        "faults": {"poof": dict(latency), "pixian": dict(latency)},
    }


@contextmanager
def sandbox_server(workdir: Path) -> Iterator[tuple[str, psutil.Process]]:
    """The vendor sandbox in its own process; yields its URL and process."""
    config = workdir / "sandbox.json"
    config.write_text(json.dumps(sandbox_config()))
    out_path = workdir / "sandbox.out"
    with out_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_bgremoval.sandbox", "--port", "0",
             "--config", str(config), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        url = ""
        while not url:
            first = out_path.read_text(errors="replace").splitlines()[:1]
            if first and first[0].startswith("bgremoval-sandbox: serving on "):
                url = first[0].rsplit(" ", 1)[1]
            elif process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not start:\n{out_path.read_text()[-2000:]}")
            else:
                time.sleep(0.05)
        while httpx.get(f"{url}/_sandbox/health", timeout=2).status_code != 200:
            time.sleep(0.05)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def check_sandbox_faults(url: str) -> str:
    """Refuse to measure with a rate limit, jitter or fault rule configured; describe the settings."""
    faults = httpx.get(f"{url}/_sandbox/faults", timeout=10).json()
    faults = faults.get("faults", faults)
    for vendor in ("poof", "pixian"):
        cfg = faults[vendor]
        problems = [
            name
            for name, ok in (
                ("latency", cfg["latency_ms"] == LATENCY_MS),
                ("jitter", cfg["jitter_ms"] == 0),
                ("rate limit", cfg["rate_limit_rps"] is None),
                ("concurrency limit", cfg["max_concurrency"] is None),
                ("fault rules", not cfg["rules"]),
                ("exhaust_after", cfg["exhaust_after"] is None),
                ("auth_revoked", not cfg["auth_revoked"]),
            )
            if not ok
        ]
        if problems:
            raise RuntimeError(f"sandbox {vendor} is not configured for the benchmark: {problems} {cfg}")
    return f"{LATENCY_MS} ms fixed latency, no jitter, no rate/concurrency limit, no fault rules"


# -- data ------------------------------------------------------------------------------------------
def small_shot(index: int) -> bytes:
    """A 96x72 PNG studio shot: a coloured subject on a plain light backdrop (distinct per index)."""
    rng = random.Random(index)
    image = Image.new("RGB", (96, 72), tuple(rng.randint(225, 245) for _ in range(3)))
    x, y = rng.randint(16, 30), rng.randint(10, 20)
    colour = (rng.randint(120, 200), rng.randint(20, 90), rng.randint(20, 90))
    ImageDraw.Draw(image).ellipse((x, y, x + rng.randint(30, 45), y + rng.randint(28, 40)), fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def big_shot(seed: int) -> bytes:
    """A 1200x900 JPEG (q92, 4:4:4) of ~1.2 MB: a subject on a backdrop, textured with noise."""
    rng = random.Random(seed)
    w, h = BIG_SIZE
    image = Image.new("RGB", BIG_SIZE, tuple(rng.randint(215, 245) for _ in range(3)))
    cx, cy = w // 2 + rng.randint(-w // 10, w // 10), h // 2 + rng.randint(-h // 10, h // 10)
    rx, ry = rng.randint(w // 6, w // 4), rng.randint(h // 5, h // 3)
    colour = (rng.randint(120, 200), rng.randint(20, 90), rng.randint(20, 90))
    ImageDraw.Draw(image).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
    noise = Image.frombytes("RGB", BIG_SIZE, rng.randbytes(w * h * 3))
    out = io.BytesIO()
    Image.blend(image, noise, 0.25).save(out, format="JPEG", quality=92, subsampling=0)
    return out.getvalue()


class Seeder:
    """Creates buckets and uploads objects straight over fake-gcs-server's JSON API, with threads."""

    def __init__(self, url: str, threads: int = 8) -> None:
        self.http = httpx.Client(
            base_url=url, timeout=120, limits=httpx.Limits(max_connections=threads), trust_env=False
        )
        self.threads = threads

    def bucket(self, name: str) -> str:
        reply = self.http.post("/storage/v1/b", params={"project": "bench"}, json={"name": name})
        if reply.status_code not in (200, 409):
            raise RuntimeError(f"creating bucket {name}: {reply.status_code} {reply.text[:200]}")
        return name

    def upload(
        self, bucket: str, names: list[str], data_for: Callable[[int], bytes], content_type: str
    ) -> int:
        def one(index: int) -> int:
            data = data_for(index)
            reply = self.http.post(
                f"/upload/storage/v1/b/{bucket}/o",
                params={"uploadType": "media", "name": names[index]},
                content=data,
                headers={"content-type": content_type},
            )
            reply.raise_for_status()
            return len(data)

        with ThreadPoolExecutor(self.threads) as pool:
            return sum(pool.map(one, range(len(names))))

    def count(self, bucket: str, prefix: str) -> int:
        total, token = 0, None
        while True:
            params: dict[str, Any] = {
                "prefix": prefix,
                "maxResults": 1000,
                "fields": "items(name),nextPageToken",
            }
            if token:
                params["pageToken"] = token
            page = self.http.get(f"/storage/v1/b/{quote(bucket)}/o", params=params).json()
            total += len(page.get("items", []))
            token = page.get("nextPageToken")
            if not token:
                return total

    def close(self) -> None:
        self.http.close()


# -- client runs -----------------------------------------------------------------------------------
def client_env(workdir: Path, gcs_url: str, sandbox_url: str) -> dict[str, str]:
    """Environment of a client process: a private AIRFLOW_HOME, the connections, the emulator."""
    from tests.support.sandbox import connection_env

    home = workdir / "airflow-home"
    (home / "dags").mkdir(parents=True, exist_ok=True)
    running = SimpleNamespace(
        url=sandbox_url,
        pixelcut_key=DEFAULT_PIXELCUT_KEY,
        pixian_id=DEFAULT_PIXIAN_ID,
        pixian_secret=DEFAULT_PIXIAN_SECRET,
        poof_key=DEFAULT_POOF_KEY,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    env.update(connection_env(running, timeout=60, max_retries=3))  # type: ignore[arg-type]
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "STORAGE_EMULATOR_HOST": gcs_url,
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def run_client(
    workdir: Path, env: dict[str, str], name: str, args: list[str], watch: dict[str, psutil.Process]
) -> dict[str, Any]:
    """Run one client process; return its figures plus the CPU the servers spent meanwhile."""
    result = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    before = {key: proc.cpu_times() for key, proc in watch.items()}
    started = time.perf_counter()
    with log.open("wb") as out:
        code = subprocess.call(
            [sys.executable, "-m", "tests.benchmarks.bench_client", *args, "--result", str(result)],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if code != 0:
        raise RuntimeError(f"client {name} failed ({code}); log tail:\n{log.read_text()[-3000:]}")
    figures: dict[str, Any] = json.loads(result.read_text())
    figures["process_wall_s"] = time.perf_counter() - started
    for key, proc in watch.items():
        after = proc.cpu_times()
        figures[f"{key}_cpu_s"] = (after.user + after.system) - (before[key].user + before[key].system)
    return figures


# -- report ----------------------------------------------------------------------------------------
def load() -> str:
    """``uptime``-style load averages."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def per_image_ms(seconds: float | None, images: int) -> str:
    return "-" if seconds is None or not images else f"{1000 * seconds / images:.1f}"


def report(meta: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    """The figure table."""
    lines: list[str] = []
    add = lines.append
    add("=" * 100)
    add("Bucket pipeline benchmark")
    add(
        f"host: {meta['cpus']} CPUs, {meta['mem_total_gb']:.0f} GB RAM; load average (1/5/15 min) "
        f"start {meta['load_start']}, end {meta['load_end']}; total {meta['total_s']:.0f} s"
    )
    add(f"sandbox: {meta['sandbox']}; fake-gcs-server: {meta['gcs_backend']} backend; {meta['mode']} run")
    if meta.get("experiments"):
        add(f"EXPERIMENTS (proposed optimisations applied in the client): {', '.join(meta['experiments'])}")
    add("")
    small, naive = runs["small"], runs["naive"]
    done = small["counts"].get("done", 0)
    add(
        f"1. Throughput: {small['images']} small images (96x72 PNG), vendor {small['vendor']} "
        f"(cheapest sandbox path), max_concurrency={small['concurrency']}, ideal {IDEAL:.0f} images/s"
    )
    add(f"   {'':38}{'images':>7}{'plan s':>9}{'exec s':>9}{'images/s':>10}{'of ideal':>10}{'1,000 in':>11}")
    rate = small["images_per_s"]
    add(
        f"   {'pipeline (plan_batch + BatchRunner)':38}{done:>7}{small['plan_wall_s']:>9.2f}"
        f"{small['exec_wall_s']:>9.2f}{rate:>10.1f}{rate / IDEAL:>10.0%}{1000 / rate:>10.1f}s"
    )
    nrate = naive["images_per_s"]
    add(
        f"   {'naive sequential loop (requests)':38}{naive['images']:>7}{'-':>9}"
        f"{naive['exec_wall_s']:>9.2f}{nrate:>10.2f}{nrate / IDEAL:>10.1%}{1000 / nrate:>10.0f}s"
    )
    add(
        f"   speed-up over the naive loop: x{rate / nrate:.1f}; planning {small['plan_wall_s']:.2f} s "
        f"wall / {small['plan_cpu_s']:.2f} s CPU for {small['images']} sources "
        f"(listing, destination lookup, header checks); goal >= {THROUGHPUT_GOAL:.0%} of ideal: "
        f"{'MET' if rate >= THROUGHPUT_GOAL * IDEAL else 'MISSED'}"
    )
    client_ms = small["cpu_ms_per_image"]
    servers_ms = (small.get("sandbox_cpu_s", 0.0) + small.get("gcs_cpu_s", 0.0)) * 1000 / max(done, 1)
    add(
        f"   CPU ceilings at these CPU costs: the client alone (one GIL) {1000 / client_ms:.0f} images/s; "
        f"this {meta['cpus']}-CPU box running client + sandbox + fake-gcs-server "
        f"{meta['cpus'] * 1000 / (client_ms + servers_ms):.0f} images/s (before other load)"
    )
    add("")
    if all(key in runs for key in ("big_a", "big_total")):
        add(
            f"2. Peak RSS of the client process: JPEG {BIG_SIZE[0]}x{BIG_SIZE[1]} of "
            f"~{meta['big_mb']:.2f} MB each, vendor pixian (max_pixels=10000), max_concurrency={CONCURRENCY}"
        )
        add(
            f"   {'images':>8}{'GB read':>9}{'baseline MB':>13}{'peak MB':>9}{'peak-base':>11}"
            f"{'RSS@50%':>9}{'RSS@90%':>9}{'images/s':>10}{'exec s':>8}{'plan s':>8}"
        )
        verdicts = []
        for key in ("big_a", "big_total"):
            run = runs[key]
            over = run["peak_rss_mb"] - run["baseline_rss_mb"]
            verdicts.append(over)
            gigabytes = run["images"] * meta["big_mb"] / 1024
            add(
                f"   {run['images']:>8,}{gigabytes:>9.1f}{run['baseline_rss_mb']:>13.0f}"
                f"{run['peak_rss_mb']:>9.0f}{over:>11.0f}"
                f"{at_progress(run, 0.5):>9.0f}{at_progress(run, 0.9):>9.0f}"
                f"{run['images_per_s']:>10.1f}{run['exec_wall_s']:>8.0f}{run['plan_wall_s']:>8.1f}"
            )
        a, b = runs["big_a"], runs["big_total"]
        growth = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["images"] - a["images"]) * 1000
        add(
            f"   growth {growth:+.1f} MB per 1,000 extra images; goals: < {RSS_GOAL_MB:.0f} MB above "
            f"baseline {'MET' if max(verdicts) < RSS_GOAL_MB else 'MISSED'} (worst {max(verdicts):.0f} MB), "
            f"flat (< {FLAT_MB_PER_1000:.0f} MB per 1,000 images) "
            f"{'MET' if growth < FLAT_MB_PER_1000 else 'MISSED'}"
        )
        add("")
    add(f"3. CPU per image, execution phase of the {small['images']}-image run (process CPU time / images)")
    add(f"   {'':38}{'client ms':>10}{'sandbox ms':>11}{'fake-gcs ms':>12}")
    add(
        f"   {'pipeline, small PNG (poof)':38}{small['cpu_ms_per_image']:>10.1f}"
        f"{per_image_ms(small.get('sandbox_cpu_s'), done):>11}"
        f"{per_image_ms(small.get('gcs_cpu_s'), done):>12}"
    )
    add(
        f"   {'naive loop, small PNG (poof)':38}{naive['cpu_ms_per_image']:>10.1f}"
        f"{per_image_ms(naive.get('sandbox_cpu_s'), naive['images']):>11}"
        f"{per_image_ms(naive.get('gcs_cpu_s'), naive['images']):>12}"
    )
    for key in [k for k in ("big_a", "big_total") if k in runs]:
        run = runs[key]
        n = run["counts"].get("done", 0)
        add(
            f"   {'pipeline, ' + format(run['images'], ',') + ' x ~1.2 MB JPEG (pixian)':38}"
            f"{run['cpu_ms_per_image']:>10.1f}{per_image_ms(run.get('sandbox_cpu_s'), n):>11}"
            f"{per_image_ms(run.get('gcs_cpu_s'), n):>12}"
        )
    add(
        f"   client CPU / wall during the small run: {small['exec_cpu_s'] / small['exec_wall_s']:.0%} "
        f"of one core; pipeline / naive loop: {small['cpu_ms_per_image'] / naive['cpu_ms_per_image']:.2f}x"
    )
    add_components(add, small.get("components") or {})
    add("=" * 100)
    return "\n".join(lines)


def add_components(add: Callable[[str], None], components: dict[str, float]) -> None:
    """``--components``: each step's client CPU alone (ms per call), the pipeline's then the naive loop's."""
    if not components:
        return
    add("   each step alone (--components, client ms of CPU per call):")
    for step, ms in components.items():
        add(f"     {step:44}{ms:>8.2f}")
    naive = sum(ms for step, ms in components.items() if step.startswith("naive:"))
    ours = sum(ms for step, ms in components.items() if not step.startswith(("naive:", "stat ")))
    ratio = ours / max(naive, 1e-9)
    add(f"     {'sum: pipeline steps / naive steps':44}{ours:>8.2f} / {naive:.2f} = {ratio:.2f}x")


def at_progress(run: dict[str, Any], fraction: float) -> float:
    """RSS sampled when ``fraction`` of the batch had finished."""
    target = fraction * run["images"]
    for _, finished, rss in run["rss_samples"]:
        if finished >= target:
            return float(rss)
    return float(run["rss_samples"][-1][2]) if run["rss_samples"] else float("nan")


def run_memory(
    args: argparse.Namespace,
    sizes: Sizes,
    workdir: Path,
    env: dict[str, str],
    watch: dict[str, psutil.Process],
    seeder: Seeder,
    meta: dict[str, Any],
    runs: dict[str, dict[str, Any]],
) -> None:
    """Seed the big JPEGs once, then the two memory runs (the smaller prefix is part of the larger)."""
    variants = [big_shot(seed) for seed in range(BIG_VARIANTS)]
    meta["big_mb"] = sum(len(v) for v in variants) / len(variants) / 2**20
    big_names = [f"big/a/img-{i:06d}.jpg" for i in range(sizes.big_a)] + [
        f"big/b/img-{i:06d}.jpg" for i in range(sizes.big_a, sizes.big_total)
    ]
    say(f"seeding {len(big_names)} JPEGs of ~{meta['big_mb']:.2f} MB (free RAM "
        f"{psutil.virtual_memory().available / 2**30:.1f} GB)")  # fmt: skip
    seeded = time.perf_counter()
    total = seeder.upload("bench-big-src", big_names, lambda i: variants[i % BIG_VARIANTS], "image/jpeg")
    meta["big_seed_s"] = time.perf_counter() - seeded
    say(f"  {total / 2**30:.1f} GB in {meta['big_seed_s']:.0f} s")

    for key, prefix, bucket, count in (
        ("big_a", "big/a/", "bench-big-a-dst", sizes.big_a),
        ("big_total", "big/", "bench-big-all-dst", sizes.big_total),
    ):
        say(f"pipeline over {count} big images (pixian)")
        runs[key] = run_client(
            workdir,
            env,
            key,
            ["pipeline", "--conn-id", "pixian_default", "--bucket", "bench-big-src", "--prefix", prefix,
             "--dst-bucket", bucket, "--dst-prefix", "out/", "--concurrency", str(CONCURRENCY),
             "--pixian-max-pixels", "10000", *(["--tracemalloc"] if args.tracemalloc else []),
             *(f"--experiment={name}" for name in args.experiment)],
            watch,
        )  # fmt: skip
        run = runs[key]
        say(
            f"  {run['images_per_s']:.1f} images/s, peak RSS {run['peak_rss_mb']:.0f} MB "
            f"(baseline {run['baseline_rss_mb']:.0f} MB), counts {run['counts']}"
        )


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the table."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_pipeline", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small smoke run (200 / 10 / 200 / 1,000 images)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument(
        "--gcs-backend", choices=("filesystem", "memory"), default="filesystem",
        help="fake-gcs-server backend (default filesystem, see the module docstring)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the small run's client (all threads)"
    )
    parser.add_argument(
        "--experiment",
        action="append",
        default=[],
        choices=("gcs-no-trust-env", "multipart-once"),
        help="pipeline clients try a proposed optimisation (see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="memory runs: list the Python allocations left after the batch",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, profiles)")
    parser.add_argument(
        "--components", action="store_true", help="after the small run, the client CPU of each step alone"
    )
    parser.add_argument(
        "--throughput-only", action="store_true", help="skip the memory runs (while developing)"
    )
    parser.add_argument(
        "--big-sizes", default=None, help="the two memory-run sizes, e.g. 2000,5000 (default 2000,10000)"
    )
    parser.add_argument("--report-from", type=Path, default=None, help="print the table of a --json file")
    args = parser.parse_args(argv)
    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        print(report(saved["meta"], saved["runs"]))
        return 0
    sizes = QUICK if args.quick else FULL
    if args.big_sizes:
        smaller, larger = (int(n) for n in args.big_sizes.split(","))
        sizes = Sizes(sizes.small, sizes.naive, smaller, larger)
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
        "mem_total_gb": psutil.virtual_memory().total / 2**30,
        "load_start": load(),
        "gcs_backend": args.gcs_backend,
        "experiments": args.experiment,
    }
    if args.gcs_backend == "memory":
        needed = sizes.big_total * 1.3 * 2**20 * 1.2
        available = psutil.virtual_memory().available
        if needed > min(14 * 2**30, available / 2):
            raise SystemExit(
                f"the memory backend would hold ~{needed / 2**30:.0f} GB; use --gcs-backend filesystem"
            )
    workdir = Path(tempfile.mkdtemp(prefix="bgremoval-bench-"))
    say(f"work directory {workdir}; {meta['mode']} run; load {meta['load_start']}")
    runs: dict[str, dict[str, Any]] = {}
    try:
        with (
            fake_gcs_server(workdir, args.gcs_backend) as (gcs_url, gcs_proc),
            sandbox_server(workdir) as (
                sandbox_url,
                sandbox_proc,
            ),
        ):
            meta["sandbox"] = check_sandbox_faults(sandbox_url)
            env = client_env(workdir, gcs_url, sandbox_url)
            watch = {"sandbox": sandbox_proc, "gcs": gcs_proc}
            seeder = Seeder(gcs_url)
            small_bucket = seeder.bucket("bench-small-src")
            for bucket in ("bench-small-dst", "bench-naive-dst", "bench-big-src", "bench-big-a-dst"):
                seeder.bucket(bucket)
            seeder.bucket("bench-big-all-dst")

            say(f"seeding {sizes.small} small PNGs")
            names = [f"src/shot-{i:05d}.png" for i in range(sizes.small)]
            seeder.upload(small_bucket, names, small_shot, "image/png")

            say(f"naive loop over {sizes.naive} images")
            runs["naive"] = run_client(
                workdir,
                env,
                "naive",
                ["naive", "--bucket", small_bucket, "--prefix", "src/", "--dst-bucket", "bench-naive-dst",
                 "--limit", str(sizes.naive), "--vendor-url", sandbox_url, "--api-key", DEFAULT_POOF_KEY],
                watch,
            )  # fmt: skip
            say(f"  {runs['naive']['images_per_s']:.2f} images/s")

            say(f"pipeline over {sizes.small} small images (poof)")
            profile_args = ["--profile", str(workdir / "small.prof")] if args.profile else []
            profile_args += [f"--experiment={name}" for name in args.experiment]
            if args.components:
                profile_args += ["--components", "--vendor-url", sandbox_url, "--api-key", DEFAULT_POOF_KEY]
            runs["small"] = run_client(
                workdir,
                env,
                "small",
                ["pipeline", "--conn-id", "poof_default", "--bucket", small_bucket, "--prefix", "src/",
                 "--dst-bucket", "bench-small-dst", "--dst-prefix", "out/",
                 "--concurrency", str(CONCURRENCY), *profile_args],
                watch,
            )  # fmt: skip
            say(f"  {runs['small']['images_per_s']:.1f} images/s, counts {runs['small']['counts']}")

            if not args.throughput_only:
                run_memory(args, sizes, workdir, env, watch, seeder, meta, runs)
            seeder.close()
        meta["load_end"] = load()
        meta["total_s"] = time.perf_counter() - started
        table = report(meta, runs)
        print(table)
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
        if args.profile:
            say(f"profile: {workdir / 'small.txt'}")
    finally:
        if args.keep or args.profile:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
