"""Benchmarks of the bucket pipeline (``make bench``); not collected by pytest (``bench_*.py``)."""
