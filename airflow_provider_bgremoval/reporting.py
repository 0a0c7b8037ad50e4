"""Run reports: one JSON report and a before/after contact sheet per DAG run, in the destination bucket.

:class:`RunReportOperator` runs after the bucket tasks of a DAG run (mapped or not). It reads the
run's manifests back from the destination bucket — the manifests are the record of what happened, so
the report is right also when a shard failed, was retried or halted on credits — and writes:

* ``<destination_prefix>_bgremoval/reports/<dag_id>/<run_id>/report.json``: counts by status, credits
  spent, manifest URIs, the rejected and failed sources with their reasons, pending images, and the
  credits pre-flight estimate when one is given;
* ``<destination_prefix>_bgremoval/reports/<dag_id>/<run_id>/contact-sheet.png``: thumbnails of a
  sample of processed sources next to their results, the results on a checkerboard so transparency
  shows (see :func:`contact_sheet_size` for the exact size).

.. code-block:: python

    cutouts = RemoveBackgroundOperator.partial(...).expand(source_objects=shards.output)
    RunReportOperator(
        task_id="run_report",
        destination_bucket="shop-cutouts",
        destination_prefix="2026/11/",
        estimate="{{ ti.xcom_pull(task_ids='check_credits') }}",
        trigger_rule="all_done_min_one_success",
    )
    cutouts >> report

The pure functions (:func:`summarise_manifests`, :func:`render_contact_sheet`,
:func:`contact_sheet_size`) are usable outside Airflow.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from PIL import Image, ImageDraw, ImageFont, ImageOps

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.pipeline.manifest import collate_manifests, read_manifest
from airflow_provider_bgremoval.pipeline.naming import INTERNAL_DIR, normalise_prefix
from airflow_provider_bgremoval.storage.gcs import GcsStorage

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

#: Statuses in report order.
REPORT_STATUSES = ("done", "skipped", "rejected", "failed", "pending")
#: Upstream task states that make the report task fail after writing the report.
_BAD_UPSTREAM_STATES = frozenset({"failed", "upstream_failed"})

# Contact-sheet layout (pixels). ``contact_sheet_size`` is the single source of the geometry.
_PAD = 8
_LABEL = 16
_HEADER = 28
_CHECKER = 8
_BACKGROUND = (250, 250, 250)
_INK = (40, 40, 40)


def report_prefix(destination_prefix: str, dag_id: str, run_id: str) -> str:
    """
    The folder of a run's report and contact sheet.

    :param destination_prefix: the bucket tasks' destination prefix.
    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    """
    safe_run = re.sub(r"[^A-Za-z0-9._+=@-]", "_", run_id)
    return f"{normalise_prefix(destination_prefix)}{INTERNAL_DIR}reports/{dag_id}/{safe_run}/"


def manifest_run_prefix(destination_prefix: str, dag_id: str, run_id: str) -> str:
    """
    Where the bucket tasks of one DAG run write their manifests (see ``pipeline.manifest``).

    :param destination_prefix: the bucket tasks' destination prefix.
    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    """
    return (
        f"{normalise_prefix(destination_prefix)}{INTERNAL_DIR}manifests/{dag_id}/{run_id.replace('/', '_')}/"
    )


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except (InvalidOperation, ValueError):
        return Decimal(0)


def _try_number(name: str) -> int:
    match = re.search(r"try-(\d+)\.jsonl$", name)
    return int(match.group(1)) if match else 0


@dataclass
class RunSummary:
    """
    What one DAG run did, from its manifests.

    :param counts: sources by final status (``done`` wins over a later ``skipped`` of the same run).
    :param credits_spent: credits charged over every try of the run.
    :param manifests: ``gs://`` URIs of the manifests read.
    :param rows: the final row of each source (manifest row dicts).
    """

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPORT_STATUSES, 0))
    credits_spent: Decimal = Decimal(0)
    manifests: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def by_status(self, status: str) -> list[dict[str, Any]]:
        """
        The final rows with ``status``.

        :param status: one of :data:`REPORT_STATUSES`.
        """
        return [row for row in self.rows if row["status"] == status]


def summarise_manifests(manifests: Iterable[tuple[str, bytes]]) -> RunSummary:
    """
    Fold the manifests of one DAG run into a :class:`RunSummary`.

    Each source's final status is its row from the latest try, except that ``done`` in an earlier try
    of the same run stays ``done`` (the retry then skipped it). Credits add up over every try.

    :param manifests: ``(uri, bytes)`` pairs of the manifest objects found, checkpoint parts included
        (a try that left only parts is read from them, see
        :func:`~airflow_provider_bgremoval.pipeline.manifest.collate_manifests`); the try number is read
        from the name (``try-<n>.jsonl``).
    """
    manifests = collate_manifests(manifests)
    summary = RunSummary()
    final: dict[str, tuple[int, dict[str, Any]]] = {}
    done_rows: dict[str, dict[str, Any]] = {}
    for uri, data in sorted(manifests, key=lambda item: _try_number(item[0])):
        summary.manifests.append(uri)
        attempt = _try_number(uri)
        for row in read_manifest(data):
            summary.credits_spent += _decimal(row.get("credits"))
            source = row["source"]
            if row["status"] == "done":
                done_rows[source] = row
            previous = final.get(source)
            if previous is None or attempt >= previous[0]:
                final[source] = (attempt, row)
    for source, (_, row) in sorted(final.items()):
        chosen = done_rows.get(source, row) if row["status"] == "skipped" else row
        summary.rows.append(chosen)
        summary.counts[chosen["status"]] = summary.counts.get(chosen["status"], 0) + 1
    return summary


# -- the contact sheet ------------------------------------------------------------------------------
def contact_sheet_size(pairs: int, *, thumb: int = 160, columns: int = 3) -> tuple[int, int]:
    """
    The exact ``(width, height)`` of a contact sheet with ``pairs`` before/after pairs.

    Pairs are laid out in ``min(pairs, columns)`` columns; each cell is two ``thumb``-pixel squares
    side by side with a label line under them; a header line runs across the top.

    :param pairs: number of before/after pairs (at least 1).
    :param thumb: edge of each thumbnail square.
    :param columns: pairs per row.
    """
    if pairs < 1:
        raise ValueError("a contact sheet needs at least one pair")
    cols = min(pairs, columns)
    rows = -(-pairs // cols)
    cell_w = 2 * thumb + _PAD
    cell_h = thumb + _LABEL
    return (_PAD + cols * (cell_w + _PAD), _HEADER + rows * (cell_h + _PAD))


def checkerboard(size: tuple[int, int], square: int = _CHECKER) -> Image.Image:
    """
    A light grey checkerboard (the usual "transparent" backdrop).

    :param size: ``(width, height)``.
    :param square: edge of one square.
    """
    board = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(board)
    for y in range(0, size[1], square):
        for x in range((y // square) % 2 * square, size[0], 2 * square):
            draw.rectangle((x, y, x + square - 1, y + square - 1), fill=(204, 204, 204))
    return board


def _thumbnail(data: bytes, thumb: int, *, on_checkerboard: bool) -> Image.Image:
    """``thumb`` x ``thumb`` tile: the image fitted and centred; alpha shown over a checkerboard."""
    tile = (
        checkerboard((thumb, thumb)) if on_checkerboard else Image.new("RGB", (thumb, thumb), (255, 255, 255))
    )
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)
            image.thumbnail((thumb, thumb))
            image = image.convert("RGBA")
    except Exception as exc:  # a damaged object must not break the report
        log.warning("Contact sheet: cannot decode an image (%s)", exc)
        ImageDraw.Draw(tile).text((6, thumb // 2 - 6), "unreadable", fill=(180, 0, 0))
        return tile
    offset = ((thumb - image.width) // 2, (thumb - image.height) // 2)
    tile.paste(image, offset, image)
    return tile


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def render_contact_sheet(
    pairs: Sequence[tuple[str, bytes, bytes]],
    *,
    title: str = "",
    thumb: int = 160,
    columns: int = 3,
    colors: int | None = 256,
) -> bytes:
    """
    Render a before/after contact sheet as PNG bytes.

    :param pairs: ``(label, source bytes, result bytes)`` per pair, in display order.
    :param title: header text.
    :param thumb: edge of each thumbnail square (see :func:`contact_sheet_size`).
    :param columns: pairs per row.
    :param colors: reduce to a palette of this many colours (small files); ``None`` keeps true colour.
    """
    width, height = contact_sheet_size(len(pairs), thumb=thumb, columns=columns)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD, 7), _fit(title, 2 * width // 7), fill=_INK, font=_font(13))
    cols = min(len(pairs), columns)
    label_font = _font(11)
    for index, (label, before, after) in enumerate(pairs):
        row, col = divmod(index, cols)
        x = _PAD + col * (2 * thumb + 2 * _PAD)
        y = _HEADER + row * (thumb + _LABEL + _PAD)
        sheet.paste(_thumbnail(before, thumb, on_checkerboard=False), (x, y))
        sheet.paste(_thumbnail(after, thumb, on_checkerboard=True), (x + thumb + _PAD, y))
        draw.text((x, y + thumb + 2), _fit(label, (2 * thumb + _PAD) // 6), fill=_INK, font=label_font)
    out = io.BytesIO()
    final = sheet.quantize(colors=colors, method=Image.Quantize.MEDIANCUT) if colors else sheet
    final.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://") or "/" not in uri[5:]:
        raise ValueError(f"not a gs:// object URI: {uri!r}")
    bucket, _, name = uri[5:].partition("/")
    return bucket, name


# -- the operator -----------------------------------------------------------------------------------
class RunReportOperator(BaseOperator):
    """
    Write a DAG run's report (JSON) and before/after contact sheet (PNG) to the destination bucket.

    It reads every manifest the run's bucket tasks wrote under ``destination_prefix`` (all tasks, all
    map indexes, all tries), so put it downstream of them with
    ``trigger_rule="all_done_min_one_success"``: the report is then written also when a shard failed
    (mid-batch out of credits, ``on_error="fail_at_end"``), and not when every bucket task was skipped
    or never ran (e.g. the credits pre-flight halted). After writing, the task fails when any
    direct upstream task failed (``fail_on_upstream_failure``), so the DAG run still fails as it should.

    Returns (XCom): ``report_uri``, ``contact_sheet_uri`` (``None`` without processed images),
    ``counts``, ``credits_spent``, ``manifests``, ``sample_pairs``.

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

    def _estimate(self) -> dict[str, Any] | None:
        value = self.estimate
        if value in (None, "", "None"):
            return None
        if isinstance(value, Mapping):
            return dict(value)
        try:
            parsed = json.loads(str(value))
        except ValueError:
            try:
                import ast

                parsed = ast.literal_eval(str(value))
            except (ValueError, SyntaxError):
                return {"raw": str(value)}
        return dict(parsed) if isinstance(parsed, Mapping) else {"raw": parsed}

    def execute(self, context: Context) -> dict[str, Any]:
        """Read the run's manifests, write the report and the contact sheet, then judge upstream."""
        ti = context["ti"]
        dag_id, run_id = ti.dag_id, ti.run_id
        bucket = self.destination_bucket
        storage = GcsStorage(gcp_conn_id=self.gcp_conn_id)
        where = manifest_run_prefix(self.destination_prefix or "", dag_id, run_id)
        manifests = [
            (info.uri, storage.read(bucket, info.name))
            for info in storage.list_objects(bucket, where)
            if info.name.endswith(".jsonl")
        ]
        summary = summarise_manifests(manifests)
        folder = report_prefix(self.destination_prefix or "", dag_id, run_id)
        sample = summary.by_status("done")[: int(self.sample_size)]
        pairs = []
        for row in sample:
            src_bucket, src_name = _split_uri(row["source"])
            dst_bucket, dst_name = _split_uri(row["destination"])
            pairs.append(
                (
                    src_name.rsplit("/", 1)[-1],
                    storage.read(src_bucket, src_name),
                    storage.read(dst_bucket, dst_name),
                )
            )
        contact_sheet_uri = None
        if pairs:
            counts = summary.counts
            title = (
                f"{dag_id} · {run_id} · done {counts['done']} · skipped {counts['skipped']} · "
                f"rejected {counts['rejected']} · credits {summary.credits_spent}"
            )
            png = render_contact_sheet(
                pairs, title=title, thumb=int(self.thumb), columns=int(self.columns), colors=self.colors
            )
            info = storage.write(
                bucket,
                f"{folder}contact-sheet.png",
                png,
                content_type="image/png",
                if_generation_match=None,
            )
            contact_sheet_uri = info.uri
        report = {
            "dag_id": dag_id,
            "run_id": run_id,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "destination": f"gs://{bucket}/{normalise_prefix(self.destination_prefix or '')}",
            "counts": summary.counts,
            "total": sum(summary.counts.values()),
            "credits_spent": str(summary.credits_spent),
            "vendors": sorted({str(row.get("vendor")) for row in summary.rows if row.get("vendor")}),
            "manifests": summary.manifests,
            "estimate": self._estimate(),
            "contact_sheet_uri": contact_sheet_uri,
            "sample_pairs": [{"source": row["source"], "output": row["destination"]} for row in sample],
            "rejected": [self._problem(row) for row in summary.by_status("rejected")],
            "failed": [self._problem(row) for row in summary.by_status("failed")],
            "pending": [row["source"] for row in summary.by_status("pending")],
        }
        report_info = storage.write(
            bucket,
            f"{folder}report.json",
            json.dumps(report, indent=2).encode(),
            content_type="application/json",
            if_generation_match=None,
        )
        self.log.info(
            "Run report %s: %s; %s credits spent; contact sheet %s",
            report_info.uri,
            ", ".join(f"{status} {count}" for status, count in summary.counts.items()),
            summary.credits_spent,
            contact_sheet_uri or "(no processed images)",
        )
        result = {
            "report_uri": report_info.uri,
            "contact_sheet_uri": contact_sheet_uri,
            "counts": summary.counts,
            "credits_spent": str(summary.credits_spent),
            "manifests": summary.manifests,
            "sample_pairs": len(pairs),
        }
        if self.fail_on_upstream_failure:
            self._judge_upstream(context, result)
        return result

    @staticmethod
    def _problem(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "source": row["source"],
            "error_code": row.get("error_code"),
            "message": row.get("error_message"),
        }

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
