"""docs/sandbox.md says exactly what works with the vendors' own PyPI clients, backed by tests.

The behaviour itself is tested in ``test_pixian.py`` (``test_pixian_ai_*``) and ``test_poof.py``
(``test_poofbg_*``); this keeps the page and those tests from drifting apart: every limitation the
tests pin down is stated on the page, and the page does not claim the clients work "with only the
URL changed" (pixian-ai has no base URL to change).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def section(title: str) -> str:
    text = (ROOT / "docs" / "sandbox.md").read_text(encoding="utf-8")
    start = text.index(f"### {title}\n")
    end = text.find("\n### ", start + 1)
    return " ".join(text[start : end if end != -1 else None].split())


def defined_tests(module: str, prefix: str) -> set[str]:
    tree = ast.parse((HERE / module).read_text(encoding="utf-8"))
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith(prefix)
    }


@pytest.mark.parametrize(
    ("statement", "module", "test"),
    [
        (
            "needs its URL patched",
            "test_pixian.py",
            "test_pixian_ai_has_no_base_url_and_posts_to_the_real_host",
        ),
        ("**no test mode**", "test_pixian.py", "test_pixian_ai_limits"),
        ('(`"10.0%"`; `"10%"` raises `ValueError`', "test_pixian.py", "test_pixian_ai_limits"),
        (
            "`result_target_size` with `result_vertical_alignment`",
            "test_pixian.py",
            "test_pixian_ai_every_parameter_works",
        ),
        (
            'needs only its base URL: `Poof(api_key, base_url=SANDBOX_URL + "/v1")`',
            "test_poof.py",
            "test_poofbg_client_against_the_sandbox",
        ),
        (
            "`url=`: poofbg then sends a form with no file",
            "test_poof.py",
            "test_poofbg_url_input_does_not_work",
        ),
        (
            'crop ratios (`crop="1:1"`, `"16:9"`) → `ValidationError`',
            "test_poof.py",
            "test_poofbg_crop_ratios_do_not_work",
        ),
        (
            "`width`, `height` and `fit` are **ignored, and the call is charged**",
            "test_poof.py",
            "test_poofbg_width_height_fit_are_ignored_and_charged",
        ),
        ("`padding` (generation B) pads a crop", "test_poof.py", "test_poofbg_padding_pads_the_crop"),
        ("also `small` and `large`", "test_poof.py", "test_poofbg_sizes_work"),
        (
            "a video upload is refused as 422 `invalid_image`",
            "test_poof.py",
            "test_poofbg_video_jobs_do_not_work",
        ),
    ],
)
def test_each_statement_is_on_the_page_and_has_its_test(statement: str, module: str, test: str) -> None:
    assert statement in section("The vendors' own clients")
    assert test in defined_tests(module, "test_")


def test_no_claim_that_the_url_alone_is_enough() -> None:
    page = " ".join((ROOT / "docs" / "sandbox.md").read_text(encoding="utf-8").split())
    assert "with only the URL changed" not in page
