"""Benchmark: what Pixian's ``delta_png="auto"`` saves per master, and what decoding it costs (figures,
not a test).

Run ``python -m tests.benchmarks.bench_delta [--quick]``. Against the vendor sandbox in this process
(over a socket, through :class:`~airflow_provider_bgremoval.hooks.pixian.PixianHook`):

* **transfer**: bytes downloaded per master (the reply body) with and without the delta, for the
  repository's photos and for one photo scaled to about 1, 4 and 12 megapixels (JPEG, as a camera's),
  and the bytes of the master the hook hands on (re-encoded PNG for a delta, Pixian's bytes otherwise);
* **decode**: local CPU ms (and per megapixel) of the hook's work on a delta — the decoder
  (:func:`~airflow_provider_bgremoval.vendors.delta_png.decode_delta_png`, which also decodes the
  original), the PNG encoding of the master and reading that PNG back in the local steps — against
  reading the normal reply, which is all the hook does with it.

The sandbox's normal PNG is encoded quickly (zlib level 1) and keeps the photo's colours under fully
transparent pixels, so its "without" figures are larger than a real Pixian reply may be; Pixian's own
page gives 73 % saved for its example. CPU time is this process's (``time.process_time``), the median
of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
from pathlib import Path

import httpx
from PIL import Image

from airflow_provider_bgremoval.hooks.pixian import PixianHook
from airflow_provider_bgremoval.imaging import encode
from airflow_provider_bgremoval.sandbox.testing import RunningSandbox, run_sandbox
from airflow_provider_bgremoval.vendors.delta_png import decode_delta_png
from airflow_provider_bgremoval.vendors.pixian import PixianOptions
from tests.benchmarks.bench_renditions import cpu_ms

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"
#: about 1, 4 and 12 megapixels, 3:2
SIZES = {1: (1224, 816), 4: (2448, 1632), 12: (4242, 2828)}


def scaled_photo(megapixels: int) -> bytes:
    """coffee.png resized to ``SIZES[megapixels]``, as a quality-90 JPEG."""
    photo = (
        Image.open(IMAGES / "coffee.png").convert("RGB").resize(SIZES[megapixels], Image.Resampling.LANCZOS)
    )
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=90)
    return out.getvalue()


def photos(quick: bool) -> dict[str, bytes]:
    found = {p.name: p.read_bytes() for p in sorted(IMAGES.iterdir()) if p.suffix in (".png", ".jpg")}
    for megapixels in (1,) if quick else tuple(SIZES):
        found[f"coffee {megapixels} MP.jpg"] = scaled_photo(megapixels)
    return found


def reply(sandbox: RunningSandbox, data: bytes, output_format: str) -> bytes:
    """Pixian's reply body for ``data`` straight from the sandbox (for the decode timings)."""
    auth = (sandbox.pixian_id, sandbox.pixian_secret)
    with httpx.Client(base_url=sandbox.url, auth=auth, timeout=120) as client:
        answer = client.post(
            "/api/v2/remove-background",
            data={"output.format": output_format},
            files={"image": ("photo", data)},
        )
    answer.raise_for_status()
    return answer.content


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def transfer(hook: PixianHook, images: dict[str, bytes]) -> None:
    print("transfer per master (bytes downloaded; master = the PNG the hook hands on)")
    print(f"  {'photo':<22} {'input':>10} {'normal':>11} {'delta':>10} {'saved':>6} {'master':>11}  note")
    normal_total = delta_total = 0
    for name, data in images.items():
        normal = hook.remove_background(data, vendor_options=PixianOptions(delta_png=False))
        auto = hook.remove_background(data, vendor_options=PixianOptions(delta_png="auto"))
        used = bool(auto.metadata.get("delta_png"))
        downloaded = auto.metadata["delta_png_bytes"] if used else len(auto.content)
        normal_total += len(normal.content)
        delta_total += downloaded
        note = "" if used else f"normal PNG: {auto.metadata.get('delta_png_fallback')}"
        saved = 1 - downloaded / len(normal.content)
        print(
            f"  {name:<22} {len(data):>10,} {len(normal.content):>11,} {downloaded:>10,} {saved:>6.0%} "
            f"{len(auto.content):>11,}  {note}"
        )
    print(
        f"  {'all':<22} {'':>10} {normal_total:>11,} {delta_total:>10,} "
        f"{1 - delta_total / normal_total:>6.0%}"
    )


def decode_cost(sandbox: RunningSandbox, repeats: int, quick: bool) -> None:
    """The hook's local work per master: a delta is decoded, encoded as PNG, and that PNG is read by
    the local steps like any reply; a normal reply is only read."""
    print("local CPU per master (ms; ms per megapixel)")
    print(
        f"  {'size':<8} {'decode delta':>13} {'encode PNG':>11} {'read PNG':>9} {'delta path':>11} "
        f"{'normal path':>12} {'added ms/MP':>12}"
    )
    for megapixels in (1,) if quick else tuple(SIZES):
        data = scaled_photo(megapixels)
        delta, normal = reply(sandbox, data, "delta_png"), reply(sandbox, data, "png")
        master = decode_delta_png(delta, data)
        master_png = encode(master, "png", 0)
        pixels = master.width * master.height / 1e6
        decode_ms = cpu_ms(lambda: decode_delta_png(delta, data), repeats)  # noqa: B023 (run here)
        encode_ms = cpu_ms(lambda: encode(master, "png", 0), repeats)  # noqa: B023
        read_ms = cpu_ms(lambda: decoded(master_png), repeats)  # noqa: B023
        normal_ms = cpu_ms(lambda: decoded(normal), repeats)  # noqa: B023
        delta_ms = decode_ms + encode_ms + read_ms
        print(
            f"  {pixels:>5.1f} MP {decode_ms:>13.0f} {encode_ms:>11.0f} {read_ms:>9.0f} {delta_ms:>11.0f} "
            f"{normal_ms:>12.0f} {(delta_ms - normal_ms) / pixels:>12.0f}"
        )


def bench_connection(sandbox: RunningSandbox) -> str:
    """A ``pixian_bench`` connection (an environment variable) pointing at ``sandbox``; its id."""
    conn = {
        "conn_type": "pixian",
        "host": sandbox.url,
        "login": sandbox.pixian_id,
        "password": sandbox.pixian_secret,
    }
    os.environ["AIRFLOW_CONN_PIXIAN_BENCH"] = json.dumps(conn)
    return "pixian_bench"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="repo photos and 1 MP only, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    logging.getLogger("airflow_provider_bgremoval.sandbox").setLevel(logging.WARNING)  # one line per call
    with run_sandbox() as sandbox:
        hook = PixianHook(bench_connection(sandbox))
        transfer(hook, photos(args.quick))
        decode_cost(sandbox, repeats, args.quick)


if __name__ == "__main__":
    main()
