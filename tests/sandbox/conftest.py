"""Fixtures for the vendor sandbox tests: one sandbox per session, reset before every test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from sandbox_helpers import png_bytes, product_shot

from airflow_provider_bgremoval.sandbox import RunningSandbox, run_sandbox


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[RunningSandbox]:
    """A sandbox served on a free loopback port for the whole session."""
    with run_sandbox(seed=1234) as running:
        yield running


@pytest.fixture
def sandbox(sandbox_server: RunningSandbox) -> RunningSandbox:
    """The session sandbox, reset to its start-up state (balances, faults, logs, clock)."""
    sandbox_server.admin.reset()
    sandbox_server.admin.settings(
        result_ttl_seconds=3600,
        pixelcut_credits_type="number",
        poof_crop_padding="10%",
        costs={
            "pixelcut_remove_background": 1,
            "pixelcut_shadow": 3,
            "pixelcut_generate_background": 1,
            "pixian_per_image": 1,
            "poof_per_image": 1,
        },
    )
    return sandbox_server


@pytest.fixture
def client(sandbox: RunningSandbox) -> Iterator[httpx.Client]:
    """A plain httpx client on the sandbox base URL."""
    with httpx.Client(base_url=sandbox.url, timeout=30, trust_env=False) as c:
        yield c


@pytest.fixture(scope="session")
def product_png() -> bytes:
    """A 320x240 PNG product shot."""
    return png_bytes(product_shot())


@pytest.fixture(scope="session")
def small_png() -> bytes:
    """A 96x96 PNG product shot (cheap to process; for concurrency tests)."""
    return png_bytes(product_shot((96, 96)))


@pytest.fixture(scope="session")
def blank_png() -> bytes:
    """A plain image with nothing in it (unknown_foreground)."""
    return png_bytes(Image.new("RGB", (200, 150), (240, 240, 240)))
