"""Test helpers shipped with the provider (fake-gcs-server launcher); safe to import without test extras."""

from __future__ import annotations
