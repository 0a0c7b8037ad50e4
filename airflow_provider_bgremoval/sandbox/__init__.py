"""Offline vendor sandbox: a faithful emulator of the Pixelcut, Pixian.AI and Poof APIs.

It is a separate implementation written from the vendors' documents (it imports nothing from the
provider's client code). One ASGI app serves every vendor on one port at the vendors' own paths:

* Pixelcut: ``POST /v1/remove-background``, ``POST /v1/generate-background``, ``GET /v1/credits``
* Pixian:   ``POST /api/v2/remove-background``, ``GET /api/v2/account``
* Poof:     ``POST /v1/remove``, ``GET /v1/me`` (client base URL ``<sandbox>/v1``)

plus result URLs under ``/_results/`` and an admin API under ``/_sandbox/``. See docs/sandbox.md.

Start it with ``python -m airflow_provider_bgremoval.sandbox --port 8765`` (or ``bgremoval-sandbox``),
or in-process with :func:`run_sandbox`.
"""

from __future__ import annotations

from airflow_provider_bgremoval.sandbox.admin import SandboxAdmin
from airflow_provider_bgremoval.sandbox.app import SandboxApp, create_app
from airflow_provider_bgremoval.sandbox.config import (
    DEFAULT_BALANCE,
    DEFAULT_PIXELCUT_KEY,
    DEFAULT_PIXIAN_ID,
    DEFAULT_PIXIAN_SECRET,
    DEFAULT_POOF_KEY,
    FAULT_KINDS,
    FaultConfig,
    SandboxConfig,
)
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox, run_sandbox

__all__ = [
    "DEFAULT_BALANCE",
    "DEFAULT_PIXELCUT_KEY",
    "DEFAULT_PIXIAN_ID",
    "DEFAULT_PIXIAN_SECRET",
    "DEFAULT_POOF_KEY",
    "FAULT_KINDS",
    "FaultConfig",
    "RunningSandbox",
    "SandboxAdmin",
    "SandboxApp",
    "SandboxConfig",
    "create_app",
    "run_sandbox",
]
