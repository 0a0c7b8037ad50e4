"""Shared machinery of the fault matrix: batches through the real engine, and the cell invariants.

Every cell drives ``plan_batch`` + ``BatchRunner`` with the real vendor hooks (built from the
``AIRFLOW_CONN_*`` connections that point at the sandbox) against the real fake-gcs-server, then
checks the same invariants:

* every source has exactly one manifest row, in a final state, with a reason unless it is done;
* every object written under the destination decodes fully and records its source; no object
  exists for a source that is not done (nothing half-written);
* the sandbox charge log agrees with the manifest: the known charges (``credits`` of the rows)
  plus the possibly-charged lost replies bound what the vendor billed (exactly, for faults where
  the vendor always bills a lost reply);
* a rerun without faults completes exactly the rest and charges nothing for what was done.

The failover cells run a bucket task over a chain of accounts through real Airflow instead
(:func:`run_chain`, ``dag.test()``) and check the same invariants on its manifest and summary XCom
(:class:`ChainRun`), with the charge logs of every vendor of the chain joined to the request logs
image by image (:func:`charges_by_image`).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from PIL import Image, ImageDraw

from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.options import RemovalOptions
from airflow_provider_bgremoval.pipeline.accounts import AccountChain
from airflow_provider_bgremoval.pipeline.claims import ClaimStore
from airflow_provider_bgremoval.pipeline.engine import BatchResult, BatchRunner
from airflow_provider_bgremoval.pipeline.manifest import STATUSES, ManifestWriter, read_manifest
from airflow_provider_bgremoval.pipeline.planning import BatchPlan, BatchSpec, OutputIdentity, plan_batch
from airflow_provider_bgremoval.pipeline.processors import RemovalProcessor
from airflow_provider_bgremoval.retry import RetryPolicy
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage

VENDORS = ("pixelcut", "pixian", "poof")
CONN_IDS = {"pixelcut": "pixelcut_default", "pixian": "pixian_default", "poof": "poof_default"}
VENDOR_OF = {conn_id: vendor for vendor, conn_id in CONN_IDS.items()}
#: Images per vendor-fault cell (the issue asks for at least 50).
BATCH = 50

#: A fast stand-in for the vendors' retry policies (same rules, millisecond waits), so a cell with
#: hundreds of retries runs in a second. The real policies' waits are checked with time travel.
FAST_POLICY = RetryPolicy(
    max_attempts=6,
    max_wait=10.0,
    initial_backoff=0.005,
    max_backoff=0.02,
    jitter=0.005,
    rate_limit_step=None,
    max_retry_after=0.5,
)


def studio_shot(size: tuple[int, int], hue: int = 0) -> Image.Image:
    """A product-like subject on a plain studio backdrop (the sandbox segments it reliably)."""
    image = Image.new("RGB", size, (236, 236, 236))
    w, h = size
    colour = ((180 + hue * 7) % 256, (40 + hue * 13) % 200, (40 + hue * 29) % 200)
    ImageDraw.Draw(image).ellipse((w // 4, h // 5, 3 * w // 4, 4 * h // 5), fill=colour)
    return image


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    """Encode ``image`` with Pillow."""
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def small_batch(count: int = BATCH, prefix: str = "raw/") -> dict[str, bytes]:
    """``count`` small studio shots (64..128 px, PNG and JPEG) keyed by object name."""
    objects = {}
    for i in range(count):
        size = (64 + (i * 7) % 65, 64 + (i * 11) % 65)
        if i % 3 == 0:
            objects[f"{prefix}item-{i:03d}.jpg"] = encode(studio_shot(size, i), "JPEG", quality=90)
        else:
            objects[f"{prefix}item-{i:03d}.png"] = encode(studio_shot(size, i), "PNG")
    return objects


def seed(storage: GcsStorage, bucket: str, objects: dict[str, bytes]) -> dict[str, int]:
    """Upload ``objects``; return their generations."""
    return {
        name: storage.write(bucket, name, data, content_type="application/octet-stream").generation
        for name, data in objects.items()
    }


class CellRun:
    """What :func:`check_cell` reads of a run, whether it went through the engine or through Airflow.

    Subclasses hold ``rows`` (the manifest rows), ``charged`` (credits the sandbox charged during the
    run) and ``vendors`` (the vendors that may have made an output), and report what the run itself
    said (the engine's result, or the task's summary XCom) as :attr:`reported_counts`,
    :attr:`reported_credits` and :attr:`reported_possibly_charged`.
    """

    rows: list[dict[str, Any]]
    charged: Decimal

    @property
    def vendors(self) -> set[str]:
        """The vendors whose outputs this run may find or write."""
        raise NotImplementedError

    @property
    def reported_counts(self) -> dict[str, int]:
        """Sources per status, as the run reported them."""
        raise NotImplementedError

    @property
    def reported_credits(self) -> Decimal:
        """Credits spent, as the run reported them."""
        raise NotImplementedError

    @property
    def reported_possibly_charged(self) -> int:
        """Lost replies, as the run reported them."""
        raise NotImplementedError

    @property
    def counts(self) -> Counter[str]:
        """Rows per status."""
        return Counter(row["status"] for row in self.rows)

    def by_status(self, status: str) -> list[dict[str, Any]]:
        """Rows with ``status``."""
        return [row for row in self.rows if row["status"] == status]

    @property
    def known_credits(self) -> Decimal:
        """Credits the manifest records as charged (rows with ``credits``)."""
        return sum((Decimal(row["credits"]) for row in self.rows if row.get("credits")), Decimal(0))

    @property
    def possibly_charged(self) -> int:
        """Lost replies the manifest reports as possibly charged."""
        return sum(int(row.get("possibly_charged") or 0) for row in self.rows)


@dataclass
class BatchRun(CellRun):
    """
    One batch through the engine.

    :param plan: the plan.
    :param result: the engine's result.
    :param rows: the manifest rows.
    :param charged: credits the sandbox charged during this run.
    :param vendor: the vendor.
    :param charges: charge-log entries of this run.
    :param manifest_bytes: the manifest as written.
    """

    plan: BatchPlan
    result: BatchResult
    rows: list[dict[str, Any]]
    charged: Decimal
    vendor: str = ""
    charges: list[dict[str, Any]] = field(default_factory=list)
    manifest_bytes: bytes = b""

    @property
    def vendors(self) -> set[str]:
        """The one vendor of the batch."""
        return {self.vendor}

    @property
    def reported_counts(self) -> dict[str, int]:
        """The engine's counts."""
        return dict(self.result.counts)

    @property
    def reported_credits(self) -> Decimal:
        """The engine's ``credits_spent``."""
        return Decimal(self.result.credits_spent)

    @property
    def reported_possibly_charged(self) -> int:
        """The engine's ``possibly_charged``."""
        return self.result.possibly_charged


def charges_of(sandbox: RunningSandbox, vendor: str) -> list[dict[str, Any]]:
    """The sandbox's charge log for ``vendor`` (read in-process, no HTTP)."""
    return sandbox.admin.charges(vendor)


def make_hook(
    vendor: str, *, retry_policy: RetryPolicy | None = FAST_POLICY, **kwargs: Any
) -> BackgroundRemovalHook[Any]:
    """The real vendor hook for ``vendor``'s default connection (``retry_policy=None``: the vendor's own)."""
    if retry_policy is not None:
        kwargs["retry_policy"] = retry_policy
    return BackgroundRemovalHook.get_hook(CONN_IDS[vendor], hook_params=kwargs)


async def run_batch(
    sandbox: RunningSandbox,
    storage: GcsStorage,
    vendor: str,
    src: str,
    dst: str,
    *,
    source_prefix: str = "raw/",
    destination_prefix: str = "out/",
    hook: BackgroundRemovalHook[Any] | None = None,
    options: RemovalOptions | None = None,
    vendor_options: Any = None,
    owner: str = "faults/run/task/-1",
    claims: bool = True,
    source_objects: Sequence[str] | None = None,
    **runner_kwargs: Any,
) -> BatchRun:
    """Plan and run one batch exactly as the operator does (claims, writer id, balance probe)."""
    hook = hook or make_hook(vendor)
    before = len(charges_of(sandbox, vendor))
    processor = RemovalProcessor(hook, options or RemovalOptions(), vendor_options)
    spec = BatchSpec(
        source_bucket=src,
        destination_bucket=dst,
        source_prefix=source_prefix,
        destination_prefix=destination_prefix,
        source_objects=source_objects,
    )
    plan = await plan_batch(
        storage,
        spec,
        extension=processor.extension,
        identity=OutputIdentity.of(processor),
        limits=processor.limits,
    )
    runner_kwargs.setdefault("max_concurrency", 8)
    runner_kwargs.setdefault("on_error", "continue")
    with ManifestWriter() as manifest:
        runner = BatchRunner(
            storage,
            processor,
            plan,
            manifest,
            writer_id=owner,
            claims=ClaimStore(storage, dst, spec.internal_prefix, owner) if claims else None,
            accounts=AccountChain.single(processor, hook=hook),
            **runner_kwargs,
        )
        try:
            result = await runner.run()
        finally:
            await hook.aclose()
        data = manifest.getvalue()
    charges = charges_of(sandbox, vendor)[before:]
    charged = sum((Decimal(str(c["credits"])) for c in charges), Decimal(0))
    return BatchRun(plan, result, read_manifest(data), charged, vendor, charges, data)


def charges_by_image(sandbox: RunningSandbox, vendor: str) -> Counter[str]:
    """How many times ``vendor`` charged each image, by uploaded file name (the source's base name).

    The sandbox's charge log names the request; its request log names the file of that request.
    """
    files = {
        entry["request_id"]: str(next(iter(_uploads(entry)), ""))
        for entry in sandbox.admin.requests(vendor)
        if entry["kind"] == "process"
    }
    return Counter(files[charge["request_id"]] for charge in sandbox.admin.charges(vendor))


def _uploads(entry: dict[str, Any]) -> list[str]:
    """The uploaded file names a request log entry records (``<file NAME>`` parameters)."""
    return [
        value[len("<file ") : -1]
        for value in entry["params"].values()
        if isinstance(value, str) and value.startswith("<file ")
    ]


#: A bucket task over an ordered chain of vendor accounts, run with ``dag.test()`` by :func:`run_chain`.
CHAIN_DAG = """
from airflow.sdk import DAG
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

with DAG({dag_id!r}, schedule=None, catchup=False) as dag:
    RemoveBackgroundOperator(
        task_id="cutouts",
        conn_id={chain!r},
        source_bucket={src!r},
        source_prefix="raw/",
        destination_bucket={dst!r},
        destination_prefix="out/",
        retries=0,
        {arguments}
    )
"""


@dataclass
class ChainRun(CellRun):
    """
    One bucket task over a chain of accounts, through real Airflow (``dag.test()``).

    :param chain: the vendors of the chain, in order.
    :param task_state: the task's final state.
    :param summary: the task's ``summary`` XCom.
    :param halt: the task's ``halt`` XCom (``None`` without a halt).
    :param rows: the manifest rows.
    :param charged_images: per vendor of the chain, the charges of this run by image file name.
    """

    chain: list[str]
    task_state: str
    summary: dict[str, Any]
    halt: dict[str, Any] | None
    rows: list[dict[str, Any]]
    charged_images: dict[str, Counter[str]]

    @property
    def charged(self) -> Decimal:  # type: ignore[override]
        """Credits the chain's vendors charged during this run (one credit per image in the sandbox)."""
        return Decimal(sum(sum(counter.values()) for counter in self.charged_images.values()))

    @property
    def vendors(self) -> set[str]:
        """The chain's vendors."""
        return set(self.chain)

    @property
    def reported_counts(self) -> dict[str, int]:
        """The summary's counts."""
        return {status: int(self.summary[status]) for status in STATUSES}

    @property
    def reported_credits(self) -> Decimal:
        """The summary's ``credits_spent``."""
        return Decimal(self.summary["credits_spent"])

    @property
    def reported_possibly_charged(self) -> int:
        """The summary's ``possibly_charged``."""
        return int(self.summary["possibly_charged"])

    @property
    def accounts(self) -> dict[str, dict[str, Any]]:
        """The summary's per-account block, by connection id."""
        return {entry["conn_id"]: entry for entry in self.summary["accounts"]}


def run_chain(
    sandbox: RunningSandbox,
    storage: GcsStorage,
    dag_tester: Any,
    src: str,
    dst: str,
    dag_id: str,
    chain: Sequence[str],
    **arguments: Any,
) -> ChainRun:
    """
    Run a bucket task over the chain of vendor connection ids ``chain`` with ``dag.test()``.

    :param arguments: further operator arguments (e.g. ``max_concurrency=1``), given as Python literals.
    """
    arguments.setdefault("max_concurrency", 8)
    vendors = [VENDOR_OF[conn_id] for conn_id in chain]
    before = {vendor: charges_by_image(sandbox, vendor) for vendor in vendors}
    source = CHAIN_DAG.format(
        dag_id=dag_id,
        chain=list(chain),
        src=src,
        dst=dst,
        arguments="\n        ".join(f"{name}={value!r}," for name, value in arguments.items()),
    )
    run = dag_tester.run(source, dag_id)
    summary = run.xcom("cutouts", "summary")
    assert summary is not None, f"no summary XCom: {run.task_states()}"
    rows = read_manifest(storage.read(dst, summary["manifest_uri"].split("/", 3)[3]))
    charged = {vendor: charges_by_image(sandbox, vendor) - before[vendor] for vendor in vendors}
    return ChainRun(
        chain=vendors,
        task_state=run.task_states()["cutouts"],
        summary=summary,
        halt=run.xcom("cutouts", "halt"),
        rows=rows,
        charged_images=charged,
    )


def output_objects(storage: GcsStorage, bucket: str, prefix: str) -> dict[str, Any]:
    """Objects under ``prefix`` except the provider's own ``_bgremoval/`` folder, by name."""
    return {
        info.name: info
        for info in storage.list_objects(bucket, prefix)
        if "/_bgremoval/" not in f"/{info.name}"
    }


def assert_decodes(data: bytes, name: str) -> Image.Image:
    """``data`` is a complete image (every pixel decodes)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.width > 0 and image.height > 0, name
    return image


def check_cell(
    run: CellRun,
    storage: GcsStorage,
    dst: str,
    *,
    total: int,
    destination_prefix: str = "out/",
    exact_charges: bool = False,
    written_elsewhere: bool = False,
    money: bool = True,
) -> None:
    """
    The invariants every cell asserts (see the module docstring).

    :param exact_charges: the fault always bills a lost reply, so charged == known + possibly charged.
    :param written_elsewhere: another run may have written outputs this run did not mark done.
    :param money: compare this run's manifest with the charge log (off when runs overlap in time:
        the caller compares their sum instead).
    """
    rows = run.rows
    assert len(rows) == total, f"{len(rows)} manifest rows for {total} sources"
    assert len({row["source"] for row in rows}) == total, "a source appears twice in the manifest"
    for row in rows:
        assert row["status"] in STATUSES, row
        if row["status"] != "done":
            assert row["error_code"] and row["error_message"], f"no reason given: {row}"
    assert sum(run.reported_counts.values()) == total
    assert Counter(run.reported_counts) == run.counts
    # Outputs: complete images with their provenance (the vendor that made each, also named by the row
    # of a skipped source), only for done sources.
    outputs = output_objects(storage, dst, destination_prefix)
    made_by = {row["destination"]: row["vendor"] for row in rows if row["status"] in ("done", "skipped")}
    done = {row["destination"] for row in rows if row["status"] == "done"}
    for name, info in outputs.items():
        image = assert_decodes(storage.read(dst, name), name)
        assert info.metadata.get("bgremoval-source", "").startswith("gs://"), name
        vendor = info.metadata.get("bgremoval-vendor")
        assert vendor == made_by.get(f"gs://{dst}/{name}", vendor) and vendor in run.vendors, (name, vendor)
        assert image.mode in ("RGBA", "RGB", "LA", "L", "P"), (name, image.mode)
    written = {f"gs://{dst}/{name}" for name in outputs}
    assert done <= written, f"done rows without an output: {sorted(done - written)[:5]}"
    finished = done | {row["destination"] for row in rows if row["status"] == "skipped"}
    assert finished <= written, f"skipped rows without an output: {sorted(finished - written)[:5]}"
    if not written_elsewhere:
        assert written == finished, f"outputs for sources that are not done: {sorted(written - finished)[:5]}"
    assert run.reported_credits == run.known_credits
    assert run.reported_possibly_charged == run.possibly_charged
    if not money:
        return
    # Money: the charge log agrees with the manifest.
    known, lost = run.known_credits, run.possibly_charged
    assert run.charged >= known, f"vendor charged {run.charged} < {known} recorded in the manifest"
    assert run.charged <= known + lost, (
        f"vendor charged {run.charged} but the manifest accounts for {known} known + {lost} possibly charged"
    )
    if exact_charges:
        assert run.charged == known + lost, (run.charged, known, lost)


def check_rerun(first: CellRun, rerun: CellRun, *, total: int) -> None:
    """A fault-free rerun completes exactly what the first run did not, paying only for that."""
    before = {row["source"]: row["status"] for row in first.rows}
    after = {row["source"]: row for row in rerun.rows}
    assert before.keys() == after.keys()
    for source, status in before.items():
        row = after[source]
        if status in ("done", "skipped"):
            assert row["status"] == "skipped" and row["error_code"] == "already_done", row
        elif status == "rejected":
            assert row["status"] == "rejected", row
        else:  # failed / pending: done now
            assert row["status"] == "done", row
    redo = sum(1 for status in before.values() if status in ("failed", "pending"))
    assert rerun.counts["done"] == redo
    assert rerun.charged == rerun.known_credits == redo, (rerun.charged, redo)
    assert rerun.possibly_charged == 0
    assert len(rerun.rows) == total


def dumps(rows: list[dict[str, Any]]) -> str:
    """Rows as text (for assertion messages)."""
    return "\n".join(json.dumps(row) for row in rows[:10])
