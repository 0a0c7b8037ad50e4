"""The sandbox's rate limiters, on explicit clock readings: the sliding window and the token bucket."""

from __future__ import annotations

from airflow_provider_bgremoval.sandbox.config import FaultConfig
from airflow_provider_bgremoval.sandbox.faults import VendorFaults


def _admitted(faults: VendorFaults, times: list[float]) -> list[bool]:
    answers = []
    for now in times:
        answers.append(faults.admit(now))
        if answers[-1]:
            faults.release()
    return answers


def test_the_sliding_window_counts_the_accepted_requests_of_the_last_second() -> None:
    faults = VendorFaults("pixelcut", FaultConfig.from_dict({"rate_limit_rps": 2}), seed=1)
    assert _admitted(faults, [0.0, 0.1, 0.2, 0.9, 1.0, 1.05, 1.1]) == [
        True,
        True,
        False,
        False,
        True,
        False,
        True,
    ]


def test_the_token_bucket_saves_up_to_its_burst_and_refills_at_the_rate() -> None:
    config = FaultConfig.from_dict({"rate_limit_rps": 2, "rate_limit_burst": 3})
    faults = VendorFaults("pixelcut", config, seed=1)
    assert _admitted(faults, [0.0, 0.0, 0.0, 0.0]) == [True, True, True, False]  # a full bucket of 3
    assert _admitted(faults, [0.5, 0.6, 1.0]) == [True, False, True]  # 2 tokens per second
    assert _admitted(faults, [10.0, 10.0, 10.0, 10.0]) == [True, True, True, False]  # never more than 3 saved
