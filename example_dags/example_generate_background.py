"""
Pixelcut generate-background over a prefix of cut-outs: once with a preset scene, once with a prompt.

Sources are earlier cut-outs (RGBA PNG/WebP, e.g. the outputs of
``example_bucket_remove_background``); the provider's own ``_bgremoval/`` folder (manifests, reports)
is excluded. Each task writes 1024x1024 JPEGs named like their sources, plus a manifest, under its own
destination prefix:

* ``scene`` — the preset ``scene`` (``marble``, ``wood``, ``industrial``, ``linen``, ``brick``,
  ``counter``) → ``<destination_prefix>scene-<scene>/``;
* ``prompt`` — a free-text ``prompt`` (and ``negative_prompt``) → ``<destination_prefix>prompt/``.

A rerun skips finished outputs and charges 0 credits. Generation is a Pixelcut feature: ``conn_id``
must be a ``pixelcut`` connection. Both tasks run in the ``pixelcut_api`` pool (create it once:
``airflow pools set pixelcut_api 4 "Pixelcut API"``).

Settings: trigger ``conf``/params, else the Variable ``bgremoval_<name>``, else :data:`DEFAULTS`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, Variable

from airflow_provider_bgremoval.operators.bucket import GenerateBackgroundOperator

#: Pool of the Pixelcut calls.
POOL = "pixelcut_api"

#: Built-in defaults (lowest precedence).
DEFAULTS: dict[str, Any] = {
    "conn_id": "pixelcut_default",
    "gcp_conn_id": "google_cloud_default",
    "cutouts_bucket": "shop-cutouts",
    "cutouts_prefix": "cutouts/",
    "scenes_bucket": "shop-scenes",
    "scenes_prefix": "scenes/",
    "scene": "marble",
    "prompt": "a product photo on a sunlit oak table, soft shadows, shallow depth of field",
    "negative_prompt": "text, watermark, people",
}


def setting(params: dict[str, Any], name: str) -> Any:
    """Trigger ``conf``/param, else Variable ``bgremoval_<name>``, else :data:`DEFAULTS` (runtime only)."""
    value = params.get(name)
    if value not in (None, ""):
        return value
    return Variable.get(f"bgremoval_{name}", default=DEFAULTS[name])


def _t(name: str) -> str:
    return f"{{{{ setting(params, {name!r}) }}}}"


with DAG(
    dag_id="example_generate_background",
    description="Pixelcut generated backgrounds behind cut-outs: a preset scene and a prompt",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    user_defined_macros={"setting": setting},
    params={
        name: Param(None, type=["null", "string"], description=f"default: {default!r}")
        for name, default in DEFAULTS.items()
    },
    tags=["bgremoval", "example", "pixelcut"],
    doc_md=__doc__,
) as dag:
    common: dict[str, Any] = {
        "conn_id": _t("conn_id"),
        "gcp_conn_id": _t("gcp_conn_id"),
        "source_bucket": _t("cutouts_bucket"),
        "source_prefix": _t("cutouts_prefix"),
        "destination_bucket": _t("scenes_bucket"),
        "include": ["*.png", "*.webp"],
        "exclude": ["_bgremoval/*"],
        "pool": POOL,
        "max_concurrency": 4,
        "retries": 1,
    }

    scene = GenerateBackgroundOperator(
        task_id="scene",
        scene=_t("scene"),
        destination_prefix="{{ setting(params, 'scenes_prefix') }}scene-{{ setting(params, 'scene') }}/",
        image_transform={"scale": 0.8, "x_center": 0.5, "y_center": 0.55},
        **common,
    )

    prompt = GenerateBackgroundOperator(
        task_id="prompt",
        prompt=_t("prompt"),
        negative_prompt=_t("negative_prompt"),
        destination_prefix="{{ setting(params, 'scenes_prefix') }}prompt/",
        **common,
    )
