"""Benchmark: the client CPU of the local input checks at photo sizes (issue "Scale", requirement 5).

Figures, not a test. For one repository photo scaled to about 0.25, 4 and 16 megapixels, as PNG and as
JPEG, the median process CPU (``time.process_time``) of:

* **header** — :func:`~airflow_provider_bgremoval.imaging.read_header` on the whole file: what the
  engine, the failover stage and Pixian's wire call per image; and on a 64 KiB prefix, what planning
  reads per source;
* **check** — :func:`~airflow_provider_bgremoval.imaging.prepare_input`, the full check before the
  vendor call (limits, every pixel decoded);
* **decode** — Pillow's ``Image.open(...).load()`` alone: the floor of a full check.

``check / decode`` near 1.0 means the check decodes each pixel once. Run
``python -m tests.benchmarks.bench_local_checks [--quick]``.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

from airflow_provider_bgremoval.imaging import InputLimits, prepare_input, read_header
from tests.benchmarks.bench_renditions import cpu_ms

PHOTO = Path(__file__).resolve().parents[1] / "data" / "images" / "coffee.png"
#: What planning reads of each source to check its header (pipeline.planning's head read).
PREFIX_BYTES = 64 * 1024
NO_LIMITS = InputLimits(max_bytes=2**40)


def _decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_local_checks", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="two sizes, three repeats")
    args = parser.parse_args(argv)
    sides, repeats = ((512, 2000), 3) if args.quick else ((512, 2000, 4000), 5)
    photo = Image.open(PHOTO).convert("RGB")
    print("Local input checks: CPU ms per image (median of", repeats, "runs)")
    columns = ("MB", 6), ("header", 8), ("64 KiB", 8), ("check", 8), ("decode", 8), ("check/decode", 13)
    print(f"  {'image':<25}" + "".join(f" {name:>{width}}" for name, width in columns))
    for side in sides:
        scaled = photo.resize((side, side))
        for fmt in ("PNG", "JPEG"):
            data = _encoded(scaled, fmt)
            header = cpu_ms(lambda data=data: read_header(data), repeats)
            prefix = cpu_ms(lambda data=data: read_header(data[:PREFIX_BYTES]), repeats)
            check = cpu_ms(lambda data=data: prepare_input(data, NO_LIMITS), repeats)
            decode = cpu_ms(lambda data=data: _decode(data), repeats)
            label = f"{side}x{side} {fmt} ({side * side / 1e6:.2f} MP)"
            print(
                f"  {label:<25} {len(data) / 1e6:>6.1f} {header:>8.2f} {prefix:>8.2f} {check:>8.1f} "
                f"{decode:>8.1f} {check / decode:>12.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
