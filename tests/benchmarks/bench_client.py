"""The client side of the pipeline benchmark, run in its own process by :mod:`.bench_pipeline`.

Two workloads, each printing one JSON document (its figures) to the file given by ``--result``:

* ``pipeline`` — what ``RemoveBackgroundOperator.execute`` does, without the Airflow task around it:
  ``BackgroundRemovalHook.get_hook`` + :class:`GcsStorage`, :func:`plan_batch`, then :class:`BatchRunner` with
  claims, the balance probe and the manifest upload. Planning and execution are timed separately
  (wall and process CPU); the process RSS is measured before the batch (the baseline: Airflow, the
  provider, the hook and the storage client loaded) and sampled every 50 ms during it.
* ``naive`` — what a user writes in a ``PythonOperator``: for each blob, download it, one
  synchronous ``requests.post`` to the vendor, upload the result.

The environment (``AIRFLOW_HOME``, ``AIRFLOW_CONN_*``, ``STORAGE_EMULATOR_HOST``) comes from the parent.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

_PROCESS = psutil.Process()


def rss_mb() -> float:
    """Current resident set size of this process, MB."""
    return _PROCESS.memory_info().rss / 2**20


def cpu_split() -> tuple[float, float]:
    """User and system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss`` is in KiB on Linux), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler(threading.Thread):
    """Samples the RSS every ``interval`` seconds, with a progress figure from ``progress()``."""

    def __init__(self, progress: Any, interval: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.progress = progress
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (seconds, images finished, rss MB)
        self.peak = 0.0
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            value = rss_mb()
            self.peak = max(self.peak, value)
            self.samples.append((time.monotonic() - self._t0, int(self.progress()), value))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class ThreadProfiler:
    """
    cProfile in every thread (the event loop and the I/O pool), merged into one report.

    The timer is each thread's own CPU time (``time.thread_time``), so the report attributes CPU,
    not waiting: a thread blocked on a socket or a queue costs nothing.
    """

    def __init__(self) -> None:
        import cProfile

        self._factory = lambda: cProfile.Profile(time.thread_time)
        self._profiles: list[Any] = []
        self._lock = threading.Lock()

    def _hook(self, *_: Any) -> None:
        profile = self._factory()
        with self._lock:
            self._profiles.append(profile)
        profile.enable()  # replaces this thread's profile hook

    def start(self) -> None:
        threading.setprofile(self._hook)
        self._hook()

    def stop(self, path: Path) -> None:
        import io
        import pstats

        threading.setprofile(None)  # type: ignore[arg-type]
        with self._lock:
            profiles = list(self._profiles)
        for profile in profiles:
            profile.disable()
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            try:
                stats.add(profile)
            except TypeError:  # a thread that never ran anything
                continue
        stats.dump_stats(str(path))
        text = io.StringIO()
        report = pstats.Stats(str(path), stream=text)
        report.sort_stats("tottime").print_stats(30)
        report.sort_stats("cumulative").print_stats(40)
        path.with_suffix(".txt").write_text(text.getvalue())


EXPERIMENTS = ("gcs-no-trust-env", "multipart-once")


def apply_experiments(names: list[str], hook: Any, storage: Any) -> None:
    """
    Try a proposed optimisation without changing the provider (docs/benchmarks.md, "Proposed fixes").

    * ``gcs-no-trust-env``: the GCS ``requests`` session stops re-reading the proxy environment,
      ``~/.netrc`` and the CA-bundle variables on every request;
    * ``multipart-once``: vendor multipart bodies are encoded once and sent as one ``content=`` body.
    """
    import httpx

    if "gcs-no-trust-env" in names:
        storage.client._http.trust_env = False
    if "multipart-once" in names:
        original = hook._httpx_kwargs

        def encoded_once(wire: Any, request: Any) -> dict[str, Any]:
            kwargs = original(wire, request)
            if not kwargs.get("files"):
                return kwargs
            built = httpx.Request("POST", "http://body", data=kwargs["data"], files=kwargs["files"])
            headers = {**kwargs["headers"], "Content-Type": built.headers["Content-Type"]}
            return {"headers": headers, "content": built.read()}

        hook._httpx_kwargs = encoded_once


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Plan and run one batch like the operator does; return the figures."""
    started = time.monotonic()
    import asyncio
    import gc

    import airflow  # noqa: F401 - part of the baseline, as in a task process

    from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
    from airflow_provider_bgremoval.options import RemovalOptions
    from airflow_provider_bgremoval.pipeline.accounts import AccountChain
    from airflow_provider_bgremoval.pipeline.claims import ClaimStore
    from airflow_provider_bgremoval.pipeline.engine import BatchRunner
    from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter, manifest_object_name
    from airflow_provider_bgremoval.pipeline.planning import BatchSpec, OutputIdentity, plan_batch
    from airflow_provider_bgremoval.pipeline.processors import RemovalProcessor
    from airflow_provider_bgremoval.storage.gcs import GcsStorage

    hook = BackgroundRemovalHook.get_hook(args.conn_id)
    storage = GcsStorage(gcp_conn_id=None)
    storage.client  # noqa: B018 - create the GCS client (credentials, session) before the baseline
    vendor_options: Any = None
    if args.pixian_max_pixels:
        from airflow_provider_bgremoval.vendors.pixian import PixianOptions

        vendor_options = PixianOptions(max_pixels=args.pixian_max_pixels)
    apply_experiments(args.experiment, hook, storage)
    processor = RemovalProcessor(hook, RemovalOptions(), vendor_options)
    spec = BatchSpec(
        source_bucket=args.bucket,
        source_prefix=args.prefix,
        destination_bucket=args.dst_bucket,
        destination_prefix=args.dst_prefix,
    )
    gc.collect()
    startup_s = time.monotonic() - started
    baseline = rss_mb()
    runner: BatchRunner | None = None

    def finished() -> int:
        return 0 if runner is None else sum(runner.result.counts.values())

    sampler = RssSampler(finished)
    sampler.start()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(8)
    profiler = ThreadProfiler() if args.profile else None

    # -- planning ------------------------------------------------------------------------------
    wall, cpu = time.perf_counter(), time.process_time()
    plan = asyncio.run(
        plan_batch(
            storage,
            spec,
            extension=processor.extension,
            identity=OutputIdentity.of(processor),
            limits=processor.limits,
            concurrency=max(4, args.concurrency),
        )
    )
    plan_wall, plan_cpu = time.perf_counter() - wall, time.process_time() - cpu
    rss_after_plan = rss_mb()

    # -- execution -----------------------------------------------------------------------------
    owner = "bench/run/cutouts/-1"
    manifest = ManifestWriter()
    stages = StageTimer(storage, processor)
    runner = BatchRunner(
        storage,
        processor,
        plan,
        manifest,
        max_concurrency=args.concurrency,
        writer_id=owner,
        claims=ClaimStore(storage, spec.destination_bucket, spec.internal_prefix, owner),
        accounts=AccountChain.single(processor, hook=hook),
        progress_every_seconds=30.0,
    )

    async def run() -> Any:
        try:
            return await runner.run()
        finally:
            await hook.aclose()

    if profiler is not None:
        profiler.start()
    wall, cpu, split = time.perf_counter(), time.process_time(), cpu_split()
    result = asyncio.run(run())
    storage.write(
        spec.destination_bucket,
        manifest_object_name(spec.internal_prefix, "bench", "run", "cutouts", None, 1),
        manifest.getvalue(),
        content_type="application/x-ndjson",
    )
    exec_wall, exec_cpu = time.perf_counter() - wall, time.process_time() - cpu
    exec_user, exec_sys = (after - before for after, before in zip(cpu_split(), split, strict=True))
    if profiler is not None:
        profiler.stop(Path(args.profile))
    image_ms = image_wall_ms(manifest.getvalue())
    manifest.close()
    sampler.stop()
    allocations: list[str] = []
    if args.tracemalloc:
        import tracemalloc

        snapshot = tracemalloc.take_snapshot()
        traced, traced_peak = tracemalloc.get_traced_memory()
        allocations = [f"traced now {traced / 2**20:.1f} MB, traced peak {traced_peak / 2**20:.1f} MB"]
        allocations += [str(stat) for stat in snapshot.statistics("lineno")[:15]]
        collected = gc.collect()
        after_gc = tracemalloc.get_traced_memory()[0]
        allocations.append(f"after gc.collect() ({collected} unreachable): traced {after_gc / 2**20:.1f} MB")
        tracemalloc.stop()
    counts = dict(result.counts)
    done = counts.get("done", 0)
    return {
        "mode": "pipeline",
        "vendor": processor.vendor,
        "images": plan.total,
        "billable": len(plan.items),
        "counts": counts,
        "concurrency": args.concurrency,
        "startup_s": startup_s,
        "plan_wall_s": plan_wall,
        "plan_cpu_s": plan_cpu,
        "exec_wall_s": exec_wall,
        "exec_cpu_s": exec_cpu,
        "images_per_s": done / exec_wall if exec_wall else 0.0,
        "cpu_ms_per_image": 1000 * exec_cpu / done if done else None,
        "stage_wall_ms": stages.mean_ms(),
        "image_wall_ms": image_ms,  # claim -> read -> call -> store of one image, mean of the done rows
        "latency_ceiling_images_per_s": 1000 * args.concurrency / image_ms if image_ms else None,
        "exec_user_s": exec_user,
        "exec_sys_s": exec_sys,
        "components": measure_components(args, storage, processor) if args.components else {},
        "baseline_rss_mb": baseline,
        "rss_after_plan_mb": rss_after_plan,
        "peak_rss_sampled_mb": max(sampler.peak, baseline),
        "peak_rss_mb": peak_rss_mb(),  # ru_maxrss: the true peak, including startup
        "rss_samples": sampler.samples[:: max(1, len(sampler.samples) // 200)],
        "threads": threading.active_count(),
        "credits_spent": str(result.credits_spent),
        "halt": None if result.halt is None else result.halt.as_dict(),
        "python_allocations": allocations,
        "experiments": args.experiment,
    }


def _write_stage(name: str) -> str:
    internal = next((kind for kind in ("claims", "manifests") if f"/{kind}/" in name), None)
    return {"claims": "claim", "manifests": "manifest"}.get(internal or "", "output write")


class StageTimer:
    """
    Wall time of each stage of an image, by wrapping the storage and processor calls the batch makes.

    ``claim``, ``output write`` and ``manifest`` are all :meth:`GcsStorage.write` (told apart by folder).
    """

    def __init__(self, storage: Any, processor: Any) -> None:
        self.walls: dict[str, list[float]] = {}
        self._wrap(storage, "read", lambda *_a, **_k: "read")
        self._wrap(storage, "write", lambda _b, name, *_a, **_k: _write_stage(name))
        self._wrap(processor, "process", lambda *_a, **_k: "vendor call", coroutine=True)

    def _wrap(self, target: Any, method: str, stage_of: Any, *, coroutine: bool = False) -> None:
        original = getattr(target, method)

        def note(stage: str, started: float) -> None:
            self.walls.setdefault(stage, []).append(time.perf_counter() - started)  # list.append: atomic

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                note(stage_of(*args, **kwargs), started)

        async def atimed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                note(stage_of(*args, **kwargs), started)

        setattr(target, method, atimed if coroutine else timed)

    def mean_ms(self) -> dict[str, float]:
        """Mean wall ms per call of each stage."""
        return {stage: 1000 * sum(walls) / len(walls) for stage, walls in self.walls.items() if walls}


def image_wall_ms(manifest: bytes) -> float | None:
    """Mean wall time of one image (its manifest ``duration_ms``: claim to stored) over the done rows."""
    from airflow_provider_bgremoval.pipeline.manifest import read_manifest

    durations = [row["duration_ms"] for row in read_manifest(manifest) if row["status"] == "done"]
    return sum(durations) / len(durations) if durations else None


def _cpu_ms(step: Any, count: int) -> float:
    """Process CPU ms per call of ``step(i)`` for ``i`` in ``1..count`` (call 0 warms up)."""
    step(0)
    cpu = time.process_time()
    for index in range(1, count + 1):
        step(index)
    return 1000 * (time.process_time() - cpu) / count


def measure_components(args: argparse.Namespace, storage: Any, processor: Any) -> dict[str, float]:
    """
    Client CPU (ms) of each per-image step of the batch on its own, and of the naive loop's steps.

    The pipeline's steps use its own objects (the pooled ``GcsStorage`` session, the claim store, the
    processor and its hook); GCS steps run one at a time, the vendor call 16 at a time as in the batch.
    The naive steps are the naive loop's calls (a default ``storage.Client``, one ``requests.post``
    each). Objects go under ``components/`` in the destination bucket.
    """
    import asyncio

    import requests
    from google.cloud import storage as gcs

    from airflow_provider_bgremoval.pipeline.claims import ClaimStore
    from airflow_provider_bgremoval.retry import CallStats

    sources = list(
        itertools.islice(storage.list_objects(args.bucket, args.prefix), args.components_count + 1)
    )
    count = len(sources) - 1
    data = storage.read(sources[0].bucket, sources[0].name)
    claims = ClaimStore(storage, args.dst_bucket, "components/_bgremoval/", "bench/components")
    meta = {f"bgremoval-{key}": "x" * 40 for key in ("source", "options", "vendor", "credits", "writer")}
    figures = {
        "claim (create-only, metadata)": _cpu_ms(lambda i: claims.acquire(f"components/c/{i}.png"), count),
        "read (pinned generation, checksum)": _cpu_ms(
            lambda i: storage.read(sources[i].bucket, sources[i].name, generation=sources[i].generation),
            count,
        ),
        "output write (create-only, metadata)": _cpu_ms(
            lambda i: storage.write(
                args.dst_bucket,
                f"components/o/{i}.png",
                data,
                content_type="image/png",
                metadata=meta,
                idempotency_token=f"bench:{i}",
            ),
            count,
        ),
        "stat (one JSON GET, for reference)": _cpu_ms(
            lambda i: storage.stat(sources[i].bucket, sources[i].name), count
        ),
    }

    async def calls() -> float:
        gate = asyncio.Semaphore(16)

        async def one(_: int) -> None:
            async with gate:
                await processor.process(data, "component.png", CallStats())

        await one(0)
        cpu = time.process_time()
        await asyncio.gather(*(one(i) for i in range(count)))
        used = time.process_time() - cpu
        await processor.hook.aclose()
        return 1000 * used / count

    figures["vendor call (hook, 16 in flight)"] = asyncio.run(calls())
    client = gcs.Client()
    source, destination = client.bucket(args.bucket), client.bucket(args.dst_bucket)
    figures["naive: download"] = _cpu_ms(lambda i: source.blob(sources[i].name).download_as_bytes(), count)
    figures["naive: upload"] = _cpu_ms(
        lambda i: destination.blob(f"components/n/{i}.png").upload_from_string(
            data, content_type="image/png"
        ),
        count,
    )
    if args.vendor_url:
        figures["naive: requests.post"] = _cpu_ms(
            lambda _: requests.post(
                f"{args.vendor_url.rstrip('/')}/v1/remove",
                headers={"x-api-key": args.api_key},
                files={"image_file": ("component.png", data)},
                timeout=60,
            ).raise_for_status(),
            max(4, count // 4),  # sequential: 200 ms each
        )
    return figures


def run_naive(args: argparse.Namespace) -> dict[str, Any]:
    """The loop a user writes in a PythonOperator (no provider code); return the figures."""
    import requests
    from google.cloud import storage

    client = storage.Client()  # STORAGE_EMULATOR_HOST: anonymous, bound to the emulator
    source = client.bucket(args.bucket)
    destination = client.bucket(args.dst_bucket)
    wall, cpu, split = time.perf_counter(), time.process_time(), cpu_split()
    done = 0
    for blob in client.list_blobs(args.bucket, prefix=args.prefix, max_results=args.limit):
        data = source.blob(blob.name).download_as_bytes()
        reply = requests.post(
            f"{args.vendor_url.rstrip('/')}/v1/remove",
            headers={"x-api-key": args.api_key},
            files={"image_file": (blob.name.rsplit("/", 1)[-1], data)},
            timeout=60,
        )
        reply.raise_for_status()
        name = args.dst_prefix + blob.name.removeprefix(args.prefix).rsplit(".", 1)[0] + ".png"
        destination.blob(name).upload_from_string(reply.content, content_type="image/png")
        done += 1
    elapsed, used = time.perf_counter() - wall, time.process_time() - cpu
    user, system = (after - before for after, before in zip(cpu_split(), split, strict=True))
    return {
        "mode": "naive",
        "exec_user_s": user,
        "exec_sys_s": system,
        "images": done,
        "exec_wall_s": elapsed,
        "exec_cpu_s": used,
        "images_per_s": done / elapsed if elapsed else 0.0,
        "cpu_ms_per_image": 1000 * used / done if done else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line (used by :mod:`.bench_pipeline`)."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_client")
    parser.add_argument("mode", choices=("pipeline", "naive"))
    parser.add_argument("--result", required=True, help="write the figures (JSON) here")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--dst-bucket", required=True)
    parser.add_argument("--dst-prefix", default="out/")
    parser.add_argument("--conn-id", default="poof_default")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pixian-max-pixels", type=int, default=None)
    parser.add_argument("--profile", default=None, help="cProfile every thread into this .prof file")
    parser.add_argument(
        "--experiment", action="append", default=[], choices=EXPERIMENTS, help="try a proposed fix"
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="report the Python allocations alive after the batch"
    )
    parser.add_argument(
        "--components",
        action="store_true",
        help="pipeline: after the batch, measure the client CPU of each per-image step on its own",
    )
    parser.add_argument("--components-count", type=int, default=100, help="calls per component")
    parser.add_argument("--limit", type=int, default=50, help="naive: images to process")
    parser.add_argument("--vendor-url", default="", help="naive: the sandbox URL")
    parser.add_argument("--api-key", default=os.environ.get("BENCH_POOF_KEY", ""), help="naive: Poof key")
    args = parser.parse_args(argv)
    figures = run_pipeline(args) if args.mode == "pipeline" else run_naive(args)
    Path(args.result).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
