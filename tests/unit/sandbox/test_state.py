"""The sandbox state: fault windows count from the moment the faults were set, also after a reset;
credit headers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_bgremoval.sandbox.config import FaultConfig, SandboxConfig
from airflow_provider_bgremoval.sandbox.state import SandboxState, credits_header


def test_start_up_fault_windows_count_from_the_start_and_again_from_each_reset() -> None:
    config = SandboxConfig.from_dict({"faults": {"poof": {"fault": "error", "status": 503, "until_s": 60}}})
    state = SandboxState(config)
    assert state.faults["poof"].decide(state.now())[1] is not None
    state.clock.advance(60)
    assert state.faults["poof"].decide(state.now())[1] is None
    state.reset()  # the clock offset is cleared and the start-up outage begins again
    assert state.clock.offset == 0.0
    assert state.faults["poof"].decide(state.now())[1] is not None


def test_faults_set_later_count_from_when_they_were_set() -> None:
    state = SandboxState(SandboxConfig())
    state.clock.advance(1000)
    faults = state.new_faults("pixian", FaultConfig.from_dict({"fault": "error", "from_s": 5, "until_s": 10}))
    assert faults.set_at >= 1000
    assert faults.decide(faults.set_at + 4.9)[1] is None
    assert faults.decide(faults.set_at + 5)[1] is not None


@pytest.mark.parametrize(
    ("credits", "header"),
    [
        ("1", "1.0"),
        ("0", "0.0"),
        ("0.25", "0.25"),
        ("0.00005", "0.00005"),  # repr(float) gave "5e-05"
        ("1E+16", "10000000000000000.0"),  # and "1e+16"
        ("0.1234567890123456789", "0.1234567890123456789"),  # and "0.12345678901234568", not what was charged
    ],
)
def test_credit_headers_are_the_exact_amount_in_plain_decimals(credits: str, header: str) -> None:
    assert credits_header(Decimal(credits)) == header
