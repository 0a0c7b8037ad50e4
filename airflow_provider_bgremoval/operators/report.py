"""Run reports: a DAG run's manifests folded into ``report.json`` and ``contact-sheet.png``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.contact_sheet import (
    Pair,
    Sample,
    reduce_sample,
    render_contact_sheet,
    rendition_images,
)
from airflow_provider_bgremoval.exceptions import InvalidOptionError, redact_query, safe_excerpt
from airflow_provider_bgremoval.hooks.base import format_credits
from airflow_provider_bgremoval.operators.bucket_job import load_list
from airflow_provider_bgremoval.pipeline.manifest import manifest_run_prefix
from airflow_provider_bgremoval.pipeline.naming import folder_name, internal_prefix, normalise_prefix
from airflow_provider_bgremoval.pipeline.rendering import MASTER_MAX_BYTES
from airflow_provider_bgremoval.run_summary import summarise_stored
from airflow_provider_bgremoval.storage.exceptions import StorageError, split_gs_uri
from airflow_provider_bgremoval.storage.gcs import GcsStorage

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Upstream task states that make the report task fail after writing the report.
_BAD_UPSTREAM_STATES = frozenset({"failed", "upstream_failed"})
#: The largest sample object the contact sheet reads (the largest master rendering reads).
SAMPLE_MAX_BYTES = MASTER_MAX_BYTES
#: The most sources ``report.json`` lists under ``rejected``, ``failed`` and ``pending`` each: the first
#: in name order (``counts`` has every source; the manifests every row). The report task holds no more
#: rows than this per status, whatever the number of images of the run.
REPORT_LIST_MAX = 1_000


def report_prefix(destination_prefix: str, dag_id: str, run_id: str) -> str:
    """
    The folder of a run's report and contact sheet.

    :param destination_prefix: the bucket tasks' destination prefix.
    :param dag_id: the DAG id.
    :param run_id: the DAG run id (each id one folder name: :func:`~.naming.folder_name`).
    """
    return f"{internal_prefix(destination_prefix)}reports/{folder_name(dag_id)}/{folder_name(run_id)}/"


def _output_of(row: Mapping[str, Any]) -> str:
    """A done row's output: its destination, or (render-only: no destination written) its master."""
    return str(row["destination"] or (row.get("master") or {})["object"])


def _problem(row: Mapping[str, Any]) -> dict[str, Any]:
    """A rejected or failed row's entry; its message redacted as manifests now are (:func:`.redact_query`)."""
    message = row.get("error_message")
    message = redact_query(message) if isinstance(message, str) else message
    return {"source": row["source"], "error_code": row.get("error_code"), "message": message}


#: An account's states from best to worst: its run state is the worst state any bucket task ended it in.
ACCOUNT_STATE_ORDER: tuple[str, ...] = ("active", "max_credits", "out_of_credits", "auth_failed")
#: Circuit-breaker states from best to worst (the run's is the worst any task ended with).
BREAKER_STATE_ORDER: tuple[str, ...] = ("closed", "half_open", "open")


def _summaries(pulled: Any) -> list[Mapping[str, Any]]:
    """The summaries among what ``xcom_pull`` returned (one, a list of them, or lists of mapped ones)."""
    if isinstance(pulled, Mapping):
        return [pulled]
    if isinstance(pulled, (list, tuple)):
        return [summary for item in pulled for summary in _summaries(item)]
    return []


def _rank(order: tuple[str, ...], state: Any) -> int:
    """Position of ``state`` in ``order`` (an unknown state ranks worst, a missing one best)."""
    if state is None:
        return -1
    return order.index(state) if state in order else len(order)


def account_states(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """
    Each account's run state over the bucket tasks' summaries (one per mapped shard), only what its manifest
    rows cannot tell: the worst ``state`` and ``breaker`` any task ended with (:data:`ACCOUNT_STATE_ORDER`,
    :data:`BREAKER_STATE_ORDER`), ``breaker_opened`` summed, ``shard_states`` (docs/pipeline.md, "Failover").

    :param summaries: the bucket tasks' ``summary`` XComs.
    """
    totals: dict[str, dict[str, Any]] = {}
    entries = [entry for summary in summaries for entry in summary.get("accounts") or ()]
    for entry in entries:
        if not isinstance(entry, Mapping) or not entry.get("conn_id"):
            continue
        total = totals.setdefault(
            str(entry["conn_id"]),
            {
                "state": None,
                "state_message": None,
                "breaker": None,
                "breaker_opened": 0,
                "shard_states": {},
            },
        )
        total["breaker_opened"] += int(entry.get("breaker_opened") or 0)
        state = entry.get("state")
        if _rank(ACCOUNT_STATE_ORDER, state) > _rank(ACCOUNT_STATE_ORDER, total["state"]):
            total["state"], total["state_message"] = state, entry.get("state_message")
        if _rank(BREAKER_STATE_ORDER, entry.get("breaker")) > _rank(BREAKER_STATE_ORDER, total["breaker"]):
            total["breaker"] = entry.get("breaker")
        if state is not None:  # an entry without a state says nothing about how the task left the account
            total["shard_states"][str(state)] = total["shard_states"].get(str(state), 0) + 1
    return totals


def parse_estimate(value: Any) -> dict[str, Any] | None:
    """
    The pre-flight estimate as a dict: given as one, or as its XCom rendered to JSON or a Python repr.

    :param value: the ``estimate`` parameter (``None``, ``""`` and ``"None"`` mean none was given).
    """
    if value in (None, "", "None"):
        return None
    try:
        parsed = load_list(value if isinstance(value, Mapping) else str(value), "estimate")
    except InvalidOptionError:
        return {"raw": str(value)}
    return dict(parsed) if isinstance(parsed, Mapping) else {"raw": parsed}


class RunReportOperator(BaseOperator):
    """
    Write a DAG run's report (JSON) and before/after contact sheet (PNG) from every manifest of the run.

    Put it downstream of the bucket tasks with ``trigger_rule="all_done_min_one_success"``; its files and
    return value: docs/examples.md. ``report.json`` lists the first :data:`REPORT_LIST_MAX` rejected,
    failed and pending sources by name (``listed_max``; ``counts`` count every one): the task holds that
    many rows per status, however many images the run had (:func:`~.run_summary.summarise_stored`).

    :param destination_bucket: bucket of the outputs (and of the manifests).
    :param destination_prefix: the bucket tasks' destination prefix.
    :param estimate: the credits pre-flight's estimate (a dict, or its XCom pulled by a template).
    :param sample_size: pairs on the contact sheet (the first processed sources in name order).
    :param thumb: thumbnail edge in pixels.
    :param columns: pairs per contact-sheet row.
    :param colors: palette size of the PNG (``None``: true colour).
    :param fail_on_upstream_failure: fail after writing when a direct upstream task failed.
    :param gcp_conn_id: Google Cloud connection (ADC when absent; emulator via ``STORAGE_EMULATOR_HOST``).
    """

    template_fields: Sequence[str] = ("destination_bucket", "destination_prefix", "estimate", "sample_size")
    ui_color = "#e8e3f5"

    def __init__(
        self,
        *,
        destination_bucket: str,
        destination_prefix: str = "",
        estimate: Mapping[str, Any] | str | None = None,
        sample_size: int | str = 6,
        thumb: int = 160,
        columns: int = 3,
        colors: int | None = 256,
        fail_on_upstream_failure: bool = True,
        gcp_conn_id: str | None = "google_cloud_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.destination_bucket = destination_bucket
        self.destination_prefix = destination_prefix
        self.estimate = estimate
        self.sample_size = sample_size
        self.thumb = thumb
        self.columns = columns
        self.colors = colors
        self.fail_on_upstream_failure = fail_on_upstream_failure
        self.gcp_conn_id = gcp_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        """Read the run's manifests, write the report and the contact sheet, then judge upstream."""
        ti = context["ti"]
        dag_id, run_id = ti.dag_id, ti.run_id
        storage = GcsStorage(gcp_conn_id=self.gcp_conn_id)
        where = manifest_run_prefix(internal_prefix(self.destination_prefix), dag_id, run_id)
        listed = [
            f"gs://{self.destination_bucket}/{info.name}"
            for info in storage.list_objects(self.destination_bucket, where)
        ]
        summary = summarise_stored(
            listed,
            lambda uri: storage.read(*split_gs_uri(uri)),
            keep=max(REPORT_LIST_MAX, int(self.sample_size)),
        )
        folder = report_prefix(self.destination_prefix, dag_id, run_id)
        sample = summary.by_status("done")[: int(self.sample_size)]
        counts, credits_spent = summary.counts, format_credits(summary.credits_spent)
        states = self._account_states(context)  # what manifest rows cannot tell (:func:`account_states`)
        title = (
            f"{dag_id} · {run_id} · done {counts['done']} · skipped {counts['skipped']} · "
            f"rejected {counts['rejected']} · credits {credits_spent}"
        )
        try:  # the contact sheet is a courtesy: it never takes the report down
            contact_sheet_uri = self._write_contact_sheet(
                storage, f"{folder}contact-sheet.png", sample, title
            )
        except Exception as exc:
            self.log.warning("No contact sheet: %s: %s", type(exc).__name__, safe_excerpt(str(exc)))
            contact_sheet_uri = None
        common = {
            "contact_sheet_uri": contact_sheet_uri,
            "counts": counts,
            "credits_spent": str(summary.credits_spent),
            "manifests": summary.manifests,
        }
        report = {
            "dag_id": dag_id,
            "run_id": run_id,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "destination": f"gs://{self.destination_bucket}/{normalise_prefix(self.destination_prefix)}",
            **common,
            "total": sum(counts.values()),
            "vendors": summary.vendors,
            "accounts": [entry | states.get(entry["conn_id"], {}) for entry in summary.account_summary()],
            "estimate": parse_estimate(self.estimate),
            "sample_pairs": [{"source": row["source"], "output": _output_of(row)} for row in sample],
            "rejected": [_problem(row) for row in summary.by_status("rejected")[:REPORT_LIST_MAX]],
            "failed": [_problem(row) for row in summary.by_status("failed")[:REPORT_LIST_MAX]],
            "pending": [row["source"] for row in summary.by_status("pending")[:REPORT_LIST_MAX]],
            "listed_max": REPORT_LIST_MAX,
        }
        report_uri = self._write(
            storage, f"{folder}report.json", json.dumps(report, indent=2).encode(), "application/json"
        )
        self.log.info(
            "Run report %s: %s; %s credits spent; contact sheet %s",
            report_uri,
            ", ".join(f"{status} {count}" for status, count in counts.items()),
            credits_spent,
            contact_sheet_uri or ("(not written)" if sample else "(no processed images)"),
        )
        result = {"report_uri": report_uri, **common, "sample_pairs": len(sample)}
        if self.fail_on_upstream_failure:
            self._judge_upstream(context, result)
        return result

    def _account_states(self, context: Context) -> dict[str, dict[str, Any]]:
        """Each account's run state over the upstream bucket tasks' summaries (:func:`account_states`)."""
        upstream = sorted(self.upstream_task_ids)
        if not upstream:
            return {}
        try:
            pulled = context["ti"].xcom_pull(task_ids=upstream, key="summary")
        except Exception as exc:  # the report stands without them: the manifests hold the rest
            self.log.warning("Cannot read the bucket tasks' summaries (%s); accounts without states", exc)
            return {}
        return account_states(_summaries(pulled))

    def _write(self, storage: GcsStorage, name: str, data: bytes, content_type: str) -> str:
        bucket = self.destination_bucket
        return storage.write(bucket, name, data, content_type=content_type, if_generation_match=None).uri

    def _write_contact_sheet(
        self, storage: GcsStorage, name: str, sample: list[dict[str, Any]], title: str
    ) -> str | None:
        if not sample:
            return None
        pairs = [self._pair_or_unreadable(storage, row) for row in sample]
        png = render_contact_sheet(
            pairs, title=title, thumb=int(self.thumb), columns=int(self.columns), colors=self.colors
        )
        return self._write(storage, name, png, "image/png")

    def _pair_or_unreadable(self, storage: GcsStorage, row: Mapping[str, Any]) -> Pair:
        """:meth:`_pair`, else the pair drawn "unreadable" (with a warning): one row never loses the sheet."""
        try:
            return self._pair(storage, row)
        except Exception as exc:
            source = str(row.get("source"))
            self.log.warning("Contact sheet: %s is drawn unreadable: %s: %s", source, type(exc).__name__, exc)
            return source.rsplit("/", 1)[-1], b"", b""

    def _pair(self, storage: GcsStorage, row: Mapping[str, Any]) -> Pair:
        """
        One sample's source, output and renditions, each read at the generation its row records and
        reduced to its thumbnail at once (the sheet never holds every sample's bytes).
        """
        master = row.get("master") or {}
        output = _output_of(row)
        pins = {row["source"]: row.get("source_generation"), master.get("object"): master.get("generation")}
        pins.update((entry.get("object"), entry.get("generation")) for entry in row.get("renditions") or ())

        def read(bucket: str, name: str) -> Sample:
            data = self._sample_bytes(storage, bucket, name, pins.get(f"gs://{bucket}/{name}"))
            return reduce_sample(data, int(self.thumb))

        label = split_gs_uri(row["source"])[1].rsplit("/", 1)[-1]
        images = (label, read(*split_gs_uri(row["source"])), read(*split_gs_uri(output)))
        return (*images, rendition_images(row, read)) if row.get("renditions") else images

    def _sample_bytes(self, storage: GcsStorage, bucket: str, name: str, generation: Any) -> bytes:
        """
        A sample's bytes, pinned to the generation its row records (when it records one) and capped at
        :data:`SAMPLE_MAX_BYTES`; ``b""`` (drawn as "unreadable") when it cannot be read: deleted,
        replaced, too large, or storage failing.
        """
        pin = int(generation) if str(generation).isdecimal() and int(generation) > 0 else None
        try:
            return storage.read(bucket, name, generation=pin, max_bytes=SAMPLE_MAX_BYTES)
        except StorageError as exc:
            self.log.warning("Contact sheet: gs://%s/%s is drawn unreadable: %s", bucket, name, exc)
            return b""

    def _judge_upstream(self, context: Context, result: dict[str, Any]) -> None:
        upstream = sorted(self.upstream_task_ids)
        if not upstream:
            return
        ti = context["ti"]
        try:
            states = ti.get_task_states(dag_id=ti.dag_id, task_ids=upstream, run_ids=[ti.run_id])
        except Exception as exc:  # pragma: no cover - the API is there on Airflow 3.x
            self.log.warning("Cannot read upstream task states (%s); judging by the manifests", exc)
            states = {}
        bad = sorted(
            key for key, state in (states.get(ti.run_id) or {}).items() if str(state) in _BAD_UPSTREAM_STATES
        )
        pending = result["counts"].get("pending", 0)
        if bad or (not states and (pending or result["counts"].get("failed", 0))):
            ti.xcom_push(key="report", value=result)
            raise AirflowFailException(
                f"Run report written to {result['report_uri']}, but upstream task(s) did not succeed: "
                f"{', '.join(bad) or 'see the report'} ({pending} image(s) pending)"
            )
