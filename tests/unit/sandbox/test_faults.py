"""The sandbox's rate limiters and fault windows, on explicit clock readings: the sliding window, the
token bucket, and rules confined to a window of the sandbox clock."""

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


def _faults_at(faults: VendorFaults, times: list[float]) -> list[str | None]:
    decisions = [faults.decide(now)[1] for now in times]
    return [d and (f"error {d.status}" if d.fault == "error" else d.fault) for d in decisions]


def test_an_outage_window_fails_every_request_inside_it_and_recovers_by_itself() -> None:
    config = FaultConfig.from_dict({"fault": "error", "status": 503, "from_s": 10, "until_s": 30})
    faults = VendorFaults("poof", config, seed=1, set_at=100.0)  # set at sandbox time 100
    assert _faults_at(faults, [100.0, 109.9, 110.0, 120.0, 129.99, 130.0, 500.0]) == [
        None,
        None,
        "error 503",
        "error 503",
        "error 503",
        None,
        None,
    ]
    state = faults.state(now=115.0)
    assert state["elapsed_s"] == 15.0 and state["requests_seen"] == 7
    assert state["rules"] == [
        {
            "fault": "error",
            "rate": 1.0,
            "next": 0,
            "requests": [],
            "statuses": [503],
            "from_s": 10.0,
            "until_s": 30.0,
            "active": True,
        }
    ]
    assert faults.state(now=130.0)["rules"][0]["active"] is False  # type: ignore[index]


def test_next_is_not_used_up_outside_its_window_and_rules_after_it_still_apply() -> None:
    config = FaultConfig.from_dict(
        {"rules": [{"fault": "drop_mid_body", "next": 2, "from_s": 5}, {"fault": "slow", "requests": [1, 4]}]}
    )
    faults = VendorFaults("pixian", config, seed=1, set_at=0.0)
    assert _faults_at(faults, [0.0, 1.0, 2.0, 6.0, 7.0, 8.0]) == [
        "slow",  # request 1: the window rule is closed, the next rule applies
        None,
        None,
        "drop_mid_body",  # request 4: inside the window, before the `requests` rule
        "drop_mid_body",
        None,  # both of `next` used up inside the window
    ]


def test_a_windowed_rate_keeps_the_seeded_sequence_of_the_same_rule_without_a_window() -> None:
    times = [float(t) for t in range(40)]
    rule = {"fault": "error", "rate": 0.3}
    plain = VendorFaults("poof", FaultConfig.from_dict({"rules": [rule], "seed": 4}), seed=0)
    windowed_config = FaultConfig.from_dict({"rules": [{**rule, "until_s": 20}], "seed": 4})
    windowed = VendorFaults("poof", windowed_config, seed=0)
    unconfined = _faults_at(plain, times)
    assert _faults_at(windowed, times) == unconfined[:20] + [None] * 20
    assert any(unconfined[:20]) and any(unconfined[20:])
