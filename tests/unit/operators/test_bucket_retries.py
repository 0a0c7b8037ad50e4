"""A retried bucket task: which earlier manifests it reads, and what it leaves of each budget."""

from __future__ import annotations

import json
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.exceptions import AirflowException

from airflow_provider_bgremoval.operators.bucket import _earlier_tries, _left_after_earlier_tries
from airflow_provider_bgremoval.pipeline.accounts import Account, AccountChain
from airflow_provider_bgremoval.pipeline.manifest import manifest_object_name, manifest_part_name
from airflow_provider_bgremoval.storage.exceptions import StorageError
from tests.support.memory_storage import MemoryStorage

FOLDER = "cut/_bgremoval/manifests/dag/run/cutouts.0/"


def _try(number: int, task: str = "cutouts") -> str:
    return manifest_object_name("cut/_bgremoval/", "dag", "run", task, 0, number)


def _row(
    source: str, account: str, credits: str | None, lost: int = 0, status: str = "done"
) -> dict[str, Any]:
    return {
        "source": f"gs://raw/{source}",
        "status": status,
        "vendor": "pixian",
        "credits": credits,
        "possibly_charged": lost,
        "account": account,
    }


def _lines(*rows: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def _job(storage: Any, *budgets: tuple[str, Decimal | None]) -> Any:
    processor = SimpleNamespace(vendor="pixian", cost_per_image=Decimal(1))
    chain = AccountChain([Account(conn, processor, budget=budget) for conn, budget in budgets])  # type: ignore[arg-type]
    return SimpleNamespace(
        spec=SimpleNamespace(destination_bucket="out"), storage=storage, processor=processor, chain=chain
    )


def test_a_try_reads_the_earlier_tries_of_its_own_task_instance_only() -> None:
    storage = MemoryStorage()
    one, two = _try(1), _try(2)
    assert one == f"{FOLDER}try-1.jsonl"
    storage.put("out", one, _lines(_row("a.png", "px", "1")))
    storage.put("out", manifest_part_name(one, 1), _lines(_row("a.png", "px", "1")))  # held by its final
    storage.put("out", manifest_part_name(two, 1), _lines(_row("b.png", "px", "1")))  # try 2 stored no final
    storage.put("out", manifest_part_name(two, 2), _lines(_row("c.png", "px", "1")))
    storage.put("out", _try(3), _lines(_row("d.png", "px", "9")))  # this try's own name: not earlier
    storage.put("out", _try(1, task="cutouts.1"), _lines(_row("e.png", "px", "9")))  # another task
    job = _job(storage, ("px", None))

    assert _earlier_tries(job, _try(1), 1) == []
    assert storage.requests["list"] == 0  # a first try reads nothing
    earlier = _earlier_tries(job, _try(3), 3)
    assert [uri.removeprefix(f"gs://out/{FOLDER}") for uri, _ in earlier] == [
        "try-1.jsonl",
        "try-2.part-00001.jsonl",
        "try-2.part-00002.jsonl",
    ]


def test_unreadable_earlier_manifests_fail_the_try_before_it_spends() -> None:
    class Failing(MemoryStorage):
        def read(self, bucket: str, name: str, **kwargs: Any) -> bytes:
            raise StorageError("503 from the bucket", bucket=bucket, name=name)

    storage = Failing()
    storage.put("out", _try(1), _lines(_row("a.png", "px", "1")))
    job = _job(storage, ("px", None))
    with pytest.raises(AirflowException, match="cannot read the manifests of this task's earlier tries"):
        _earlier_tries(job, _try(2), 2)
    damaged = [(f"gs://out/{_try(1)}", b'{"source": "gs://raw/a.png", "sta')]
    with pytest.raises(AirflowException, match="nothing is sent"):
        _left_after_earlier_tries(job, Decimal(10), damaged)


def test_a_retry_gets_what_the_earlier_tries_left_of_every_budget() -> None:
    earlier = [
        (
            f"gs://out/{_try(1)}",
            _lines(
                _row("a.png", "px", "2"),  # pixian charged 2 against a cost table of 1
                _row("b.png", "px", None, lost=1, status="failed"),  # a lost reply: priced at 2 too
                _row("c.png", "poof", "1"),
                _row("d.png", "poof", None, status="pending"),
            ),
        ),
        (
            f"gs://out/{_try(2)}",
            _lines(_row("e.png", "poof", "1"), _row("a.png", "px", None, status="skipped")),
        ),
    ]
    job = _job(MemoryStorage(), ("px", Decimal(3)), ("poof", Decimal(5)))
    px, poof = job.chain.accounts

    # charged 2 + 1 + 1, one lost reply at pixian's dearest charge (2): 6 at risk
    assert _left_after_earlier_tries(job, Decimal(10), earlier) == Decimal(4)
    assert (px.budget, poof.budget) == (Decimal(0), Decimal(3))  # 3 - 4 is never below 0; 5 - 2
    assert px.unit_cost() == Decimal(2)  # the next reservations price pixian as the earlier tries saw it

    job = _job(MemoryStorage(), ("px", None), ("poof", None))
    assert _left_after_earlier_tries(job, Decimal(5), earlier) == Decimal(0)
    assert _left_after_earlier_tries(job, None, earlier) is None  # no max_credits: none is made up
    assert _left_after_earlier_tries(job, Decimal(5), []) == Decimal(5)
