"""Benchmark: 8 shards in 8 processes share one vendor account limited to 10 requests/s (figures, not a test).

Run ``python -m tests.benchmarks.bench_rate_limit [--quick]``; :func:`run_rate_limit_bench` is the
entry point for ``make bench``. Everything runs on this machine, over sockets:

* the vendor sandbox in its own process (``python -m airflow_provider_bgremoval.sandbox``), Pixelcut
  limited to ``rate_limit_rps=10`` with 300 ms (+0..100 ms) latency and no ``Retry-After`` (as
  documented); once with a token bucket of 10 (``rate_limit_burst``) and once with the sandbox's
  default sliding one-second window of accepted requests (the stricter reading; docs/rate-limits.md);
* 8 client processes, each a shard: a :class:`~airflow_provider_bgremoval.hooks.pixelcut.PixelcutHook`
  read from its Airflow connection (``requests_per_second=10``: the account's limit), and 16 workers
  (the engine's default ``max_concurrency``) calling ``aremove_background`` — the hook's one call
  path, pacing and retry policy included — until the run's time is up. Nothing is shared between
  the shards but the sandbox.

Figures, from the sandbox's own request and charge logs: accepted requests per second against
the limit, the share of requests answered 429, the convergence time (when the 429 share of the
last 10 s first stays under 5 % with the accepted rate at 90 % of the limit), images that failed,
and charges per image (1: nothing charged twice).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from airflow_provider_bgremoval.sandbox.admin import SandboxAdmin
from airflow_provider_bgremoval.sandbox.config import DEFAULT_PIXELCUT_KEY

REPO = Path(__file__).resolve().parents[2]
LIMIT = 10.0
SHARDS = 8
WORKERS = 16
LATENCY_MS, JITTER_MS = 300, 100
THROUGHPUT_GOAL, REJECTED_GOAL = 0.90, 0.05
GRACE_S = 30.0  # after the run: for the calls under way to finish (then they are cancelled)
STARTUP_S = 40.0  # time for 8 processes to import Airflow and read their connection on 2 CPUs


def say(message: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    sys.stderr.write(f"[bench-rate {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


@contextmanager
def sandbox_process(workdir: Path) -> Iterator[str]:
    """The vendor sandbox in its own process; yields its URL."""
    url_file = workdir / "sandbox.url"
    log = (workdir / "sandbox.log").open("ab")
    command = [sys.executable, "-m", "airflow_provider_bgremoval.sandbox", "--port", "0"]
    command += ["--url-file", str(url_file), "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not url_file.exists() or not url_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not start; see {workdir / 'sandbox.log'}")
            time.sleep(0.05)
        yield url_file.read_text().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def connection_env(url: str) -> dict[str, str]:
    """The shards' Pixelcut connection: the sandbox, and the account's limit as ``requests_per_second``."""
    extra = {"timeout": 30, "max_retries": 5, "requests_per_second": LIMIT}
    conn = {"conn_type": "pixelcut", "host": url, "password": DEFAULT_PIXELCUT_KEY, "extra": extra}
    return {"AIRFLOW_CONN_PIXELCUT_DEFAULT": json.dumps(conn)}


def subject_png(seed: int) -> bytes:
    """A small studio shot: a red disc on a light background (the sandbox finds its subject)."""
    image = Image.new("RGB", (96, 96), (235, 235, 235))
    ImageDraw.Draw(image).ellipse((20 + seed % 8, 18, 72, 80), fill=(200, 40, 40))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def _shard(shard: int, start_at: float, seconds: float) -> dict[str, Any]:
    """One shard: 16 workers through one hook from ``start_at`` (wall clock) for ``seconds``."""
    from airflow_provider_bgremoval.exceptions import BgRemovalError
    from airflow_provider_bgremoval.hooks.pixelcut import PixelcutHook

    hook = PixelcutHook()
    hook.get_settings()
    await asyncio.sleep(max(0.0, start_at - time.time()))  # every shard starts at once
    image, deadline = subject_png(shard), time.monotonic() + seconds
    outcomes: dict[str, int] = {}
    rates: list[tuple[float, float | None]] = []

    async def worker(n: int) -> None:
        index = 0
        while time.monotonic() < deadline:
            index += 1
            try:
                await hook.aremove_background(image, filename=f"s{shard}-w{n}-{index}.png")
                outcome = "done"
            except BgRemovalError as exc:
                outcome = f"failed:{type(exc).__name__}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if hook.pacer is not None:
                rates.append((round(seconds - (deadline - time.monotonic()), 2), hook.pacer.rate))

    workers = [asyncio.create_task(worker(n)) for n in range(WORKERS)]
    try:  # no image starts after the deadline; the calls under way get a grace to finish
        await asyncio.wait(workers, timeout=seconds + GRACE_S)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await hook.aclose()
    return {"shard": shard, "outcomes": outcomes, "rates": rates[:: max(1, len(rates) // 40)]}


def run_client(shard: int, start_at: float, seconds: float, result: Path) -> None:
    """A shard's process body (``--client``): run, then write what happened as JSON."""
    result.write_text(json.dumps(asyncio.run(_shard(shard, start_at, seconds))))


def _per_second(log: list[dict[str, Any]], start: float, seconds: int) -> list[tuple[int, int]]:
    """(accepted, 429) per second of the run, from the sandbox's request log."""
    buckets = [[0, 0] for _ in range(seconds + 30)]
    for entry in log:
        second = int(entry["timestamp"] - start)
        if 0 <= second < len(buckets):
            buckets[second][entry["status"] == 429] += 1
    return [(a, r) for a, r in buckets]


def _convergence(per_second: list[tuple[int, int]], seconds: int, width: int = 10) -> float | None:
    """First second after which every 10 s window has <= 5 % 429s and >= 90 % of the limit accepted."""
    windows = []
    for end in range(width, seconds + 1):
        accepted = sum(a for a, _ in per_second[end - width : end])
        rejected = sum(r for _, r in per_second[end - width : end])
        windows.append(
            rejected <= REJECTED_GOAL * (accepted + rejected) and accepted >= THROUGHPUT_GOAL * LIMIT * width
        )
    for index in range(len(windows)):
        if all(windows[index:]):
            return float(index)  # the window starting at this second
    return None


def measure(
    admin: SandboxAdmin, url: str, workdir: Path, seconds: int, burst: float | None
) -> dict[str, Any]:
    """One run of the 8 shards against the limit (``burst``: token bucket; ``None``: sliding window)."""
    admin.reset()
    admin.set_balance("pixelcut", 1_000_000)
    admin.set_faults(
        "pixelcut",
        latency_ms=LATENCY_MS,
        jitter_ms=JITTER_MS,
        rate_limit_rps=LIMIT,
        rate_limit_burst=burst,
    )
    env = {**os.environ, **connection_env(url), "PYTHONPATH": str(REPO)}
    env.setdefault("AIRFLOW_HOME", str(workdir / "airflow"))
    results = [workdir / f"shard-{n}.json" for n in range(SHARDS)]
    start = time.time() + STARTUP_S  # the shards import Airflow first, then start together
    command = [sys.executable, "-m", "tests.benchmarks.bench_rate_limit"]
    command += ["--start-at", str(start), "--seconds", str(seconds)]
    clients = [
        subprocess.Popen([*command, "--client", str(n), "--result", str(path)], env=env, cwd=REPO)
        for n, path in enumerate(results)
    ]
    if any(client.wait() != 0 for client in clients):
        raise RuntimeError("a shard process failed")
    log = [r for r in admin.requests("pixelcut") if r["kind"] == "process"]
    if min(r["timestamp"] for r in log) < start:
        raise RuntimeError(f"a shard started late: raise STARTUP_S ({STARTUP_S} s)")
    measured = _per_second(log, start, seconds)[:seconds]
    accepted = sum(a for a, _ in measured)
    rejected = sum(r for _, r in measured)
    shards = [json.loads(path.read_text()) for path in results]
    outcomes: dict[str, int] = {}
    for shard in shards:
        for name, count in shard["outcomes"].items():
            outcomes[name] = outcomes.get(name, 0) + count
    charges = len(admin.charges("pixelcut"))
    return {
        "limiter": "token bucket (burst 10)" if burst else "sliding 1 s window",
        "seconds": len(measured),
        "accepted_per_s": accepted / len(measured),
        "throughput_vs_limit": accepted / len(measured) / LIMIT,
        "share_429": rejected / (accepted + rejected),
        "requests": accepted + rejected,
        "convergence_s": _convergence(measured, len(measured)),
        "images": outcomes,
        "charges_per_image": charges / max(1, outcomes.get("done", 0)),
        "final_rates": [shard["rates"][-1][1] if shard["rates"] else None for shard in shards],
        "per_second": measured,
    }


def run_rate_limit_bench(quick: bool = False) -> list[dict[str, Any]]:
    """
    The 8-shard rate-limit measurement, both limiter readings; prints a table and returns the figures.

    :param quick: 30 s runs instead of 90 s.
    """
    seconds = 30 if quick else 90
    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp, sandbox_process(Path(tmp)) as url:
        admin = SandboxAdmin(url)
        try:
            for burst in (LIMIT, None):
                say(f"{SHARDS} shards x {WORKERS} workers for {seconds} s, limit {LIMIT:g}/s, burst {burst}")
                figures.append(measure(admin, url, Path(tmp), seconds, burst))
                say(json.dumps({k: v for k, v in figures[-1].items() if k != "per_second"}))
        finally:
            admin.close()
    print_table(figures)
    return figures


def print_table(figures: list[dict[str, Any]]) -> None:
    """The figures as a table on stdout."""
    print(f"\n8 shards (8 processes) x {WORKERS} workers, one Pixelcut account limited to {LIMIT:g} req/s")
    print(f"{'sandbox limiter':<26}{'accepted/s':>11}{'vs limit':>10}{'429 share':>11}{'converged':>11}"
          f"{'requests':>10}{'images':>22}{'charges/image':>15}")  # fmt: skip
    for f in figures:
        converged = "never" if f["convergence_s"] is None else f"{f['convergence_s']:.0f} s"
        images = ", ".join(f"{k} {v}" for k, v in sorted(f["images"].items()))
        print(f"{f['limiter']:<26}{f['accepted_per_s']:>11.2f}{f['throughput_vs_limit']:>10.1%}"
              f"{f['share_429']:>11.2%}{converged:>11}{f['requests']:>10}{images:>22}"
              f"{f['charges_per_image']:>15.3f}")  # fmt: skip
    print(
        f"goals: >= {THROUGHPUT_GOAL:.0%} of the limit, <= {REJECTED_GOAL:.0%} answered 429, "
        "0 failed, 1 charge/image"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_rate_limit")
    parser.add_argument("--quick", action="store_true", help="30 s runs instead of 90 s")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=90.0, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client is not None:
        run_client(args.client, args.start_at, args.seconds, args.result)
        return 0
    figures = run_rate_limit_bench(args.quick)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
