"""The vendors' size limits written in megabytes are read the same way by the clients and the sandbox.

Pixelcut says "Max size: 25MB", Poof "Maximum size: 20MB" and Pixian lets ``image.base64`` be "at
most 1 megabyte". Both sides read MB as a decimal megabyte (1,000,000 bytes, docs/sandbox.md
"Choices where the vendor documents are silent"). The sandbox imports no client code (DESIGN.md
decision 10), so each side states the value itself; this test is what keeps the two in step, and it
takes the Pixelcut figure from the vendor's own OpenAPI text. The same goes for the one byte cap
neither side finds in the documents but both need (Pixian's, derived from its pixel cap).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from airflow_provider_bgremoval.sandbox import pixelcut as sandbox_pixelcut
from airflow_provider_bgremoval.sandbox import pixian as sandbox_pixian
from airflow_provider_bgremoval.sandbox import poof as sandbox_poof
from airflow_provider_bgremoval.sandbox import state as sandbox_state
from airflow_provider_bgremoval.vendors import base, pixelcut, pixian, poof

SPECS = Path(__file__).resolve().parents[2] / "data" / "openapi"
#: Poof's remove-background reference (vendor-docs/poof-remove-background.reference.txt), verbatim.
POOF_DOCUMENTED = "Supports JPEG, PNG, and WebP formats. Maximum size: 20MB."


def documented_megabytes(text: str) -> int:
    """The "N MB" / "NMB" figure of a vendor sentence (exactly one)."""
    (figure,) = re.findall(r"(\d+)\s*MB\b", text)
    return int(figure)


def test_megabyte_is_decimal_on_both_sides() -> None:
    assert base.MEGABYTE == sandbox_state.MEGABYTE == 1_000_000


@pytest.mark.parametrize("spec", ["pixelcut-remove-background", "pixelcut-generate-background"])
def test_pixelcut_25mb(spec: str) -> None:
    figures = {
        documented_megabytes(line)
        for line in (SPECS / f"{spec}.yaml").read_text().splitlines()
        if "Max size" in line
    }
    assert figures == {25}
    assert pixelcut.MAX_UPLOAD_BYTES == pixelcut.PixelcutWire.spec.limits.max_bytes == 25_000_000
    assert sandbox_pixelcut.MAX_BYTES == pixelcut.MAX_UPLOAD_BYTES


def test_poof_20mb() -> None:
    assert documented_megabytes(POOF_DOCUMENTED) * base.MEGABYTE == 20_000_000
    assert poof.MAX_UPLOAD_BYTES == poof.PoofWire.spec.limits.max_bytes == 20_000_000
    assert sandbox_poof.MAX_BYTES == poof.MAX_UPLOAD_BYTES


def test_pixian_base64_1_megabyte() -> None:
    assert pixian.MAX_BASE64_CHARS == sandbox_pixian.BASE64_MAX == 1_000_000


def test_pixian_byte_cap_is_one_choice_on_both_sides() -> None:
    # Pixian documents a pixel cap and no byte cap. Both sides derive the same one from it
    # (32,000,000 px x 4 bytes), so the sandbox never refuses for its size what the client sends.
    assert pixian.UPLOAD_MAX_PIXELS == sandbox_pixian.UPLOAD_PIXEL_CAP == 32_000_000
    assert pixian.UPLOAD_MAX_BYTES == pixian.PixianWire.spec.limits.max_bytes == 128_000_000
    assert sandbox_pixian.MAX_INPUT_BYTES == pixian.UPLOAD_MAX_BYTES
