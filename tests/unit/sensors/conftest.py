"""Fixtures: the fake vendor balance endpoints and the sandbox connections (:mod:`tests.support.balances`)."""

from __future__ import annotations

from tests.support.balances import sb, sleeper, vendors  # noqa: F401 - pytest fixtures
