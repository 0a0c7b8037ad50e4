"""Apache Airflow provider: background removal and generation over GCS buckets (Pixelcut, Pixian.AI, Poof)."""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("airflow-provider-bgremoval")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

#: The User-Agent of every HTTP request the provider makes (vendor APIs, result URLs, GCS).
USER_AGENT = f"airflow-provider-bgremoval/{__version__}"
