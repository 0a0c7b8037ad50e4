"""Client CPU of one vendor call, variant by variant (issue "Scale", requirement 5).

What it measures: the Poof hook's remove-background call as the engine makes it
(:class:`RemovalProcessor.process` -> ``await hook.aremove_background(...)``, 16 in flight on one event
loop, pacing off) with the benchmark's small 96x72 PNG, against the vendor sandbox running in its own
process. Each variant makes 32 warm-up calls, then 320 timed ones; the figure is the process CPU
(``time.process_time()``: the event loop and every worker thread of this process, not the sandbox's)
per timed call. The variants are interleaved, three repetitions, at sandbox latency 0 and 200 ms.

Variants (``--variants``, comma-separated):

* ``built`` — the hook as built (its :class:`PooledTransport`, small images' CPU steps inline);
* ``httpx-threads`` — the hook before this work: httpx's ``AsyncHTTPTransport`` and both CPU steps
  (the input check, the result decode) in ``asyncio.to_thread``;
* ``cheapcheck-threads`` — candidate (a): httpx's transport whose httpcore pool runs on a network
  backend answering "is this idle socket readable" with one ``poll(0)`` on a kept socket;
* ``pooled-threads`` — the provider's :class:`PooledTransport` alone (CPU steps in threads);
* ``httpx-inline`` — small images' CPU steps inline alone (httpx's transport);
* ``sync-threads`` — the sync hook from a pool of 16 threads, for reference;
* ``requests`` — the naive loop's call: ``requests.post`` (a new session each), one at a time.

Run: ``python -m tests.benchmarks.bench_vendor_call [--calls 320] [--latencies 0,200]``; ``--profile
VARIANT`` prints a cProfile (per-thread CPU timer) of the event loop thread for one variant instead.
Figures, not a test: nothing fails on a slow machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import select
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpcore
import httpx

from tests.benchmarks.bench_pipeline import client_env, sandbox_server, say, small_shot

IN_FLIGHT = 16
WARM_UP = 32
VARIANTS = (
    "built",
    "httpx-threads",
    "cheapcheck-threads",
    "pooled-threads",
    "httpx-inline",
    "sync-threads",
    "requests",
)


def setup_env(workdir: Path, sandbox_url: str) -> None:
    """A private AIRFLOW_HOME and the vendor connections (no pacing), before Airflow is imported."""
    env = client_env(workdir, gcs_url="", sandbox_url=sandbox_url)  # no GCS in this benchmark
    env.pop("STORAGE_EMULATOR_HOST")
    os.environ.clear()
    os.environ.update(env)


# -- candidate (a), measured here only: httpx's transport, its httpcore pool's idle check made cheap --
class CheapCheckStream(httpcore.AsyncNetworkStream):
    """An httpcore network stream that answers ``is_readable`` with one ``poll(0)`` on its kept socket."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket = stream.get_extra_info("socket")
        self._poll: select.poll | None = None
        if self._socket is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(self._socket.fileno(), select.POLLIN)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return CheapCheckStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info != "is_readable" or self._poll is None:
            return self._stream.get_extra_info(info)
        # A closed socket (no descriptor) counts as readable, as in httpcore: its next read returns b"".
        return self._socket.fileno() < 0 or bool(self._poll.poll(0))


class CheapCheckBackend(httpcore.AsyncNetworkBackend):
    """httpcore's AnyIO backend, its streams wrapped in :class:`CheapCheckStream`."""

    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return CheapCheckStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return CheapCheckStream(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class CheapCheckTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its httpcore pool on :class:`CheapCheckBackend` (replaces a private attribute:
    a measurement, not provider code)."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheapCheckBackend(),
        )


def make_hook(variant: str) -> Any:
    """A Poof hook configured as ``variant`` describes."""
    from airflow_provider_bgremoval.hooks.poof import PoofHook
    from airflow_provider_bgremoval.hooks.transport import PooledTransport

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=30.0)
    transports: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
        "httpx": lambda: httpx.AsyncHTTPTransport(limits=limits),
        "cheapcheck": lambda: CheapCheckTransport(limits),
        "pooled": lambda: PooledTransport(limits=limits),
    }
    kind, _, placement = variant.partition("-")
    hook = PoofHook(async_transport=transports[kind]()) if kind in transports else PoofHook()
    if placement == "threads":
        hook.inline_work_pixels = 0  # every CPU step in a worker thread, as before
    return hook


def async_calls(variant: str, images: list[bytes], calls: int, profile: bool = False) -> float:
    """Client CPU (ms) per call of ``calls`` processor calls, 16 in flight, after the warm-up."""
    from airflow_provider_bgremoval.options import RemovalOptions
    from airflow_provider_bgremoval.pipeline.processors import RemovalProcessor
    from airflow_provider_bgremoval.retry import CallStats

    hook = make_hook(variant)
    processor = RemovalProcessor(hook, RemovalOptions())

    async def batch(count: int, offset: int) -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(index: int) -> None:
            async with gate:
                image = images[(offset + index) % len(images)]
                await processor.process(image, f"shot-{index}.png", CallStats())

        await asyncio.gather(*(one(i) for i in range(count)))

    async def run() -> float:
        try:
            await batch(WARM_UP, 0)
            profiler = cProfile.Profile(time.thread_time) if profile else None
            cpu = time.process_time()
            if profiler is not None:
                profiler.enable()
            await batch(calls, WARM_UP)
            if profiler is not None:
                profiler.disable()
            used = time.process_time() - cpu
            if profiler is not None:
                pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(45)
                pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(30)
            return 1000 * used / calls
        finally:
            await hook.aclose()

    return asyncio.run(run())


def sync_threads(images: list[bytes], calls: int) -> float:
    """Client CPU (ms) per call of the sync hook driven from 16 threads."""
    from airflow_provider_bgremoval.options import RemovalOptions

    hook = make_hook("built")
    options = RemovalOptions()

    def one(index: int) -> None:
        hook.remove_background(images[index % len(images)], options=options, filename=f"shot-{index}.png")

    try:
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(pool.map(one, range(WARM_UP)))
            cpu = time.process_time()
            list(pool.map(one, range(WARM_UP, WARM_UP + calls)))
            return 1000 * (time.process_time() - cpu) / calls
    finally:
        hook.close()


def requests_calls(url: str, key: str, images: list[bytes], calls: int) -> float:
    """Client CPU (ms) per call of the naive loop's ``requests.post`` (a new session each), sequential."""
    import requests

    def one(index: int) -> None:
        requests.post(
            f"{url.rstrip('/')}/v1/remove",
            headers={"x-api-key": key},
            files={"image_file": (f"shot-{index}.png", images[index % len(images)])},
            timeout=60,
        ).raise_for_status()

    for index in range(min(WARM_UP, 8)):
        one(index)
    cpu = time.process_time()
    for index in range(calls):
        one(index)
    return 1000 * (time.process_time() - cpu) / calls


def measure(variant: str, url: str, images: list[bytes], args: argparse.Namespace) -> float:
    """One repetition of one variant: ms of client CPU per call."""
    from airflow_provider_bgremoval.sandbox.config import DEFAULT_POOF_KEY

    if variant == "requests":
        return requests_calls(url, DEFAULT_POOF_KEY, images, args.reference_calls or args.calls)
    if variant == "sync-threads":
        return sync_threads(images, args.calls)
    return async_calls(variant, images, args.calls)


def table(figures: dict[int, dict[str, list[float]]], variants: list[str]) -> str:
    """min / median ms per call, one row per variant, one column per latency."""
    latencies = sorted(figures)
    head = f"{'variant':<20}" + "".join(f"{f'{ms} ms: min / median':>24}" for ms in latencies)
    rows = [head, "-" * len(head)]
    for variant in variants:
        cells = []
        for ms in latencies:
            values = figures[ms][variant]
            cells.append(f"{f'{min(values):.2f} / {statistics.median(values):.2f}':>24}")
        rows.append(f"{variant:<20}" + "".join(cells))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Start the sandbox, run the variants interleaved at each latency, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=320)
    parser.add_argument("--reference-calls", type=int, default=0, help="requests.post calls (0: --calls)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--latencies", default="0,200", help="sandbox latencies in ms")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", default="", help="profile one variant (at the first latency)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 160 calls, 1 repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.repetitions = 160, 1
    variants = [name for name in args.variants.split(",") if name]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    images = [small_shot(index) for index in range(64)]
    latencies = [int(ms) for ms in args.latencies.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="bench-vendor-call-") as tmp,
        sandbox_server(Path(tmp)) as (url, _),
    ):
        setup_env(Path(tmp), url)
        from airflow_provider_bgremoval.sandbox.admin import SandboxAdmin

        admin = SandboxAdmin(url)
        if args.profile:
            admin.set_faults("poof", latency_ms=latencies[0], jitter_ms=0)
            async_calls(args.profile, images, args.calls, profile=True)
            return 0
        figures: dict[int, dict[str, list[float]]] = {}
        for ms in latencies:
            admin.set_faults("poof", latency_ms=ms, jitter_ms=0)
            figures[ms] = {variant: [] for variant in variants}
            for repetition in range(args.repetitions):
                for variant in variants:
                    figures[ms][variant].append(measure(variant, url, images, args))
                    say(f"{ms} ms, repetition {repetition + 1}: {variant} {figures[ms][variant][-1]:.2f} ms")
        admin.close()
    print(f"client CPU per call (ms), Poof hook, 96x72 PNG, {IN_FLIGHT} in flight, {args.calls} calls")
    print(
        f"after {WARM_UP} warm-up, {args.repetitions} interleaved repetitions; load {os.getloadavg()[0]:.1f}"
    )
    print(table(figures, variants))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
