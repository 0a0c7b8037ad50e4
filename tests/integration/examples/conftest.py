"""Shared helpers for the example-DAG tests: the example files, photos to seed, the vendor pool."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[3] / "example_dags"
EXAMPLE_FILES = sorted(EXAMPLES.glob("example_*.py"))
EXAMPLE_DAG_IDS = {
    "example_bucket_remove_background",
    "example_generate_background",
    "example_credit_monitor",
    "example_credit_monitor_wait_for_topup",
    "example_process_on_arrival",
    "example_publish_cutouts",
}


def renditions_conf(src: str, dst: str) -> dict[str, Any]:
    """The bucket DAG's conf for PNG cut-outs of ``src``'s ``products/`` and their renditions in ``dst``."""
    return {
        "source_bucket": src,
        "source_prefix": "products/",
        "destination_bucket": dst,
        "destination_prefix": "cutouts/",
        "renditions_prefix": "renditions/",
        "max_shards": 2,
        "output_format": "png",
    }


def seed(storage: Any, bucket: str, objects: dict[str, bytes]) -> None:
    """Upload ``objects`` (name -> bytes) to ``bucket`` as untyped octet streams."""
    for name, data in objects.items():
        storage.write(bucket, name, data, content_type="application/octet-stream")


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    """Image -> bytes in ``fmt``."""
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.fixture
def pixelcut_pool(airflow_db: None) -> str:
    """The example DAGs' vendor pool, created in the test database (as ``airflow pools set`` would)."""
    from airflow.models.pool import Pool

    Pool.create_or_update_pool("pixelcut_api", slots=4, description="Pixelcut API", include_deferred=False)
    return "pixelcut_api"
