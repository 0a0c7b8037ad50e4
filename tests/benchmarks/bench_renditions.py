"""Benchmark: CPU cost of local renditions (figures, not a test).

Run ``python -m tests.benchmarks.bench_renditions [--quick]``. One process, one thread, generated
masters (a shaded cut-out with an anti-aliased edge on transparency, like a vendor's PNG):

* **prepare**: decoding the master's PNG, orientation, sRGB, premultiplying — done once per image;
* **per rendition**: CPU ms of :func:`render_one` for each built-in preset and a few custom specs, per
  rendition and per megapixel of the master; the share of it spent in the compliance read-back;
* **scaling**: CPU ms per image for 1, 2, 4 and 8 renditions from one decoded master, against decoding
  the master again for every rendition.

CPU time is this process's (``time.process_time``); each figure is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from airflow_provider_bgremoval.renditions.compliance import measure
from airflow_provider_bgremoval.renditions.renderer import RenderedRendition, prepare_master, render_one
from airflow_provider_bgremoval.renditions.spec import Rendition, parse_renditions
from tests.unit.renditions.synthetic import png_bytes, product_photo

#: Master sizes: about 1, 4 and 12 megapixels (3:2, like a camera).
SIZES = {1: (1224, 816), 4: (2448, 1632), 12: (4242, 2828)}
SPECS: list[dict[str, object]] = [
    {"name": "amazon", "preset": "amazon_main"},
    {"name": "google", "preset": "google_merchant"},
    {"name": "shopify", "preset": "shopify_square"},
    {"name": "ebay", "preset": "ebay"},
    {"name": "web", "format": "webp", "max_size": 1024, "background": "transparent"},
    {"name": "thumb", "format": "jpeg", "size": [256, 256], "background": "#f4f4f4", "margin": "6%"},
    {"name": "design", "format": "png", "crop": True},
    {
        "name": "webp-white",
        "format": "webp",
        "aspect": "1:1",
        "fill": 0.85,
        "background": "#ffffff",
        "max_size": 1600,
    },
]


def cpu_ms(work: Callable[[], object], repeats: int) -> float:
    """Median CPU milliseconds of ``work()`` over ``repeats`` runs."""
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        samples.append((time.process_time() - start) * 1000)
    return statistics.median(samples)


def _per_rendition(data: bytes, renditions: Sequence[Rendition], megapixels: float, repeats: int) -> None:
    master = prepare_master(data)
    print(f"  {'rendition':<12} {'output':>11} {'ms':>8} {'ms/MP':>7} {'checks ms':>9}  compliant")
    for rendition in renditions:
        outcome = render_one(master, rendition)
        assert isinstance(outcome, RenderedRendition), outcome
        total = cpu_ms(lambda rendition=rendition: render_one(master, rendition), repeats)
        background = rendition.spec.background_rgb
        checks = cpu_ms(lambda written=outcome.data, bg=background: measure(written, bg), repeats)
        shape = f"{outcome.measured.width}x{outcome.measured.height}"
        print(
            f"  {rendition.name:<12} {shape:>11} {total:8.1f} {total / megapixels:7.1f} {checks:9.1f}"
            f"  {'yes' if outcome.compliant else 'no: ' + ', '.join(outcome.verdict.failed)}"
        )


def _scaling(data: bytes, renditions: Sequence[Rendition], repeats: int) -> None:
    print(f"  {'renditions':>10} {'decode once ms':>14} {'per rendition':>13} {'decode each ms':>14}")
    for count in (1, 2, 4, 8):
        chosen = renditions[:count]

        def once(chosen: Sequence[Rendition] = chosen) -> None:
            master = prepare_master(data)
            for rendition in chosen:
                render_one(master, rendition)

        def each(chosen: Sequence[Rendition] = chosen) -> None:
            for rendition in chosen:
                render_one(prepare_master(data), rendition)

        shared, repeated = cpu_ms(once, repeats), cpu_ms(each, repeats)
        print(f"  {count:>10} {shared:14.1f} {shared / count:13.1f} {repeated:14.1f}")


def main(argv: list[str] | None = None) -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_renditions")
    parser.add_argument("--quick", action="store_true", help="1 and 4 MP masters, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    sizes = {mp: SIZES[mp] for mp in ((1, 4) if args.quick else SIZES)}
    renditions = parse_renditions(SPECS)
    print(f"renditions benchmark: CPU ms, median of {repeats} run(s), one thread")
    for nominal, size in sizes.items():
        megapixels = size[0] * size[1] / 1e6
        data = png_bytes(product_photo(size, texture=True))
        prepare = cpu_ms(lambda data=data: prepare_master(data), repeats)
        print(
            f"\nmaster {size[0]}x{size[1]} ({megapixels:.1f} MP, ~{nominal} MP), "
            f"PNG {len(data) / 2**20:.2f} MiB"
        )
        print(
            f"  prepare (decode, sRGB, premultiply), once per image: {prepare:.1f} ms "
            f"({prepare / megapixels:.1f} ms/MP)"
        )
        _per_rendition(data, renditions, megapixels, repeats)
        _scaling(data, renditions, repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
