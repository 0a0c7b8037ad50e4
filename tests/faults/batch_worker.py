"""A batch run in its own process, for the worker-killed cells: ``python -m tests.faults.batch_worker``.

Arguments: vendor, source bucket, destination bucket, owner (the task-instance identity). The
connections and ``STORAGE_EMULATOR_HOST`` come from the environment, as in a real worker.

It does what ``RemoveBackgroundOperator.execute`` does around the engine, without Airflow's task
runner: the batch runs on its own thread (:func:`~airflow_provider_bgremoval.pipeline.engine.run_batch`),
the manifest is checkpointed every 5 rows or 0.5 s, SIGTERM drains the batch the way Airflow's task
runner does through ``on_kill``, and the final manifest is written however the batch ends. A
SIGKILL leaves only the checkpoint parts.
"""

from __future__ import annotations

import signal
import sys

#: Where the worker's manifest goes (under the destination's ``out/_bgremoval/``).
MANIFEST = "out/_bgremoval/manifests/faults/worker/cutouts/try-1.jsonl"


def main(argv: list[str]) -> int:
    """Run one batch; exit 0 when it finished, 3 when it was drained by SIGTERM."""
    vendor, src, dst, owner = argv
    from airflow_provider_bgremoval.options import RemovalOptions
    from airflow_provider_bgremoval.pipeline.claims import ClaimStore
    from airflow_provider_bgremoval.pipeline.engine import BatchRunner, run_batch
    from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter, manifest_part_name
    from airflow_provider_bgremoval.pipeline.planning import BatchSpec, OutputIdentity, plan_batch
    from airflow_provider_bgremoval.pipeline.processors import RemovalProcessor
    from airflow_provider_bgremoval.storage.gcs import GcsStorage
    from tests.faults.matrix import make_hook

    storage = GcsStorage(gcp_conn_id=None, timeout=10.0)
    hook = make_hook(vendor)
    processor = RemovalProcessor(hook, RemovalOptions())
    spec = BatchSpec(
        source_bucket=src, destination_bucket=dst, source_prefix="raw/", destination_prefix="out/"
    )

    async def plan():  # type: ignore[no-untyped-def]
        return await plan_batch(
            storage,
            spec,
            extension=processor.extension,
            identity=OutputIdentity.of(processor),
            limits=processor.limits,
        )

    import asyncio

    batch_plan = asyncio.run(plan())

    def store_part(number: int, data: bytes) -> None:
        storage.write(dst, manifest_part_name(MANIFEST, number), data, content_type="application/jsonl")

    with ManifestWriter(store_part, every_rows=5, every_seconds=0.5) as manifest:
        runner = BatchRunner(
            storage,
            processor,
            batch_plan,
            manifest,
            max_concurrency=8,
            writer_id=owner,
            claims=ClaimStore(storage, dst, spec.internal_prefix, owner),
        )
        signal.signal(signal.SIGTERM, lambda *_: runner.request_stop("terminated", "SIGTERM"))
        run_batch(runner, cleanup=hook.aclose)
        storage.write(dst, MANIFEST, manifest.getvalue(), content_type="application/jsonl")
    return 3 if runner.result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
