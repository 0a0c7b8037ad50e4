"""Renditions: every marketplace's image rendered locally from one paid master cut-out (docs/renditions.md).

:mod:`.spec` (the typed specs and presets by name), :mod:`.presets` (the built-in ones, as data),
:mod:`.renderer` (:func:`render`) and :mod:`.compliance` (the checks).
"""

from __future__ import annotations

from airflow_provider_bgremoval.renditions.compliance import CheckResult, Verdict
from airflow_provider_bgremoval.renditions.presets import PRESETS
from airflow_provider_bgremoval.renditions.renderer import (
    Master,
    RenderedRendition,
    RenderFailure,
    RenderOutcome,
    prepare_master,
    render,
)
from airflow_provider_bgremoval.renditions.spec import (
    Preset,
    Rendition,
    RenditionSpec,
    parse_renditions,
    preset_registry,
    resolve_rendition,
)

__all__ = [
    "PRESETS",
    "CheckResult",
    "Master",
    "Preset",
    "RenderFailure",
    "RenderOutcome",
    "RenderedRendition",
    "Rendition",
    "RenditionSpec",
    "Verdict",
    "parse_renditions",
    "prepare_master",
    "preset_registry",
    "render",
    "resolve_rendition",
]
