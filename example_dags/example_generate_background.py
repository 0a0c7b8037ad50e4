"""
### Pixelcut generated backgrounds behind cut-outs: a preset scene and a prompt

The sources are earlier cut-outs of one *Cut-outs format* (PNG, the default of
`example_bucket_remove_background`, or WebP) under `<cutouts_prefix>`: one format only, since
`a.png` and `a.webp` would both make `a.jpg`; the provider's own `_bgremoval/` folder (manifests,
reports) is left out. Each task writes 1024x1024 JPEGs named like their sources, plus a manifest, to
the scenes bucket:

* **scene** puts each subject on the preset *Scene* → `<scenes_prefix>scene-<scene>/`;
* **prompt** generates the scene described by *Prompt* (without what *Negative prompt* names) →
  `<scenes_prefix>prompt/`.

A rerun skips finished outputs and charges 0 credits.

**Before the first run:** generation is a Pixelcut feature: a `pixelcut_default` connection; the
`pixelcut_api` pool, e.g. `airflow pools set pixelcut_api 4 "Pixelcut API"`; a
`google_cloud_default` connection for the buckets (else Application Default Credentials).
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from airflow.sdk import DAG, Param

from airflow_provider_bgremoval.operators.bucket import GenerateBackgroundOperator

#: A Pixelcut connection and its pool.
VENDOR_CONN_ID = "pixelcut_default"
POOL = "pixelcut_api"

SCENES = ["marble", "wood", "industrial", "linen", "brick", "counter"]


class Cutouts(TypedDict):
    """The arguments both tasks share: the connection, the cut-outs they read, where they write."""

    conn_id: str
    pool: str
    source_bucket: str
    source_prefix: str
    destination_bucket: str
    include: list[str]
    max_concurrency: int
    retries: int


with DAG(
    dag_id="example_generate_background",
    description="Pixelcut generated backgrounds behind cut-outs: a preset scene and a prompt",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "cutouts_bucket": Param(
            "shop-cutouts", type="string", title="Cut-outs bucket", description="Bucket of the cut-outs."
        ),
        "cutouts_prefix": Param(
            "cutouts/", type="string", title="Cut-outs prefix", description="Cut-outs under this prefix."
        ),
        "cutouts_format": Param(
            "png",
            type="string",
            enum=["png", "webp"],
            values_display={"png": "PNG", "webp": "WebP"},
            title="Cut-outs format",
            description="Only cut-outs of this format (the remove example's output format).",
        ),
        "scenes_bucket": Param(
            "shop-scenes", type="string", title="Scenes bucket", description="Bucket of the new images."
        ),
        "scenes_prefix": Param(
            "scenes/", type="string", title="Scenes prefix", description="Prefix of the new images."
        ),
        "scene": Param(
            "marble",
            type="string",
            enum=SCENES,
            values_display={name: name.capitalize() for name in SCENES},
            title="Scene",
            description="The scene task's preset.",
        ),
        "prompt": Param(
            "a product photo on a sunlit oak table, soft shadows, shallow depth of field",
            type="string",
            minLength=1,
            title="Prompt",
            description="The prompt task's scene.",
        ),
        "negative_prompt": Param(
            "text, watermark, people",
            type="string",
            title="Negative prompt",
            description="What its scenes avoid (may be empty).",
        ),
    },
    tags=["bgremoval", "example", "pixelcut"],
    doc_md=__doc__,
) as dag:
    cutouts: Cutouts = {
        "conn_id": VENDOR_CONN_ID,
        "pool": POOL,
        "source_bucket": "{{ params.cutouts_bucket }}",
        "source_prefix": "{{ params.cutouts_prefix }}",
        "destination_bucket": "{{ params.scenes_bucket }}",
        "include": ["*.{{ params.cutouts_format }}"],
        "max_concurrency": 4,
        "retries": 1,
    }

    # [START howto_operator_generate_background_scene]
    scene = GenerateBackgroundOperator(
        task_id="scene",
        scene="{{ params.scene }}",
        image_transform={"scale": 0.8, "x_center": 0.5, "y_center": 0.55},
        destination_prefix="{{ params.scenes_prefix }}scene-{{ params.scene }}/",
        **cutouts,
    )
    # [END howto_operator_generate_background_scene]

    # [START howto_operator_generate_background_prompt]
    prompt = GenerateBackgroundOperator(
        task_id="prompt",
        prompt="{{ params.prompt }}",
        negative_prompt="{{ params.negative_prompt }}",
        destination_prefix="{{ params.scenes_prefix }}prompt/",
        **cutouts,
    )
    # [END howto_operator_generate_background_prompt]
