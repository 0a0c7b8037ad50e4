"""A batch run in its own process, for the worker-killed cell: ``python -m tests.faults.batch_worker``.

Arguments: vendor, source bucket, destination bucket, owner (the task-instance identity). The
connections and ``STORAGE_EMULATOR_HOST`` come from the environment, as in a real worker.
"""

from __future__ import annotations

import asyncio
import sys


def main(argv: list[str]) -> int:
    """Run one batch (what ``RemoveBackgroundOperator.execute`` does, without Airflow's task runner)."""
    vendor, src, dst, owner = argv
    from airflow_provider_bgremoval.options import RemovalOptions
    from airflow_provider_bgremoval.pipeline.claims import ClaimStore
    from airflow_provider_bgremoval.pipeline.engine import BatchRunner
    from airflow_provider_bgremoval.pipeline.manifest import ManifestWriter
    from airflow_provider_bgremoval.pipeline.planning import BatchSpec, plan_batch
    from airflow_provider_bgremoval.pipeline.processors import RemovalProcessor
    from airflow_provider_bgremoval.storage.gcs import GcsStorage
    from tests.faults.matrix import make_hook

    async def run() -> None:
        storage = GcsStorage(gcp_conn_id=None, timeout=10.0)
        hook = make_hook(vendor)
        processor = RemovalProcessor(hook, RemovalOptions())
        spec = BatchSpec(
            source_bucket=src, destination_bucket=dst, source_prefix="raw/", destination_prefix="out/"
        )
        plan = await plan_batch(
            storage,
            spec,
            extension=processor.extension,
            fingerprint=processor.fingerprint,
            vendor=processor.vendor,
            limits=processor.limits,
        )
        with ManifestWriter() as manifest:
            runner = BatchRunner(
                storage,
                processor,
                plan,
                manifest,
                max_concurrency=8,
                writer_id=owner,
                claims=ClaimStore(storage, dst, spec.internal_prefix, owner),
            )
            await runner.run()
        await hook.aclose()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
