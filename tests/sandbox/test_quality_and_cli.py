"""Cut-out quality against known ground truth, robustness on real photos, speed, and the CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from sandbox_helpers import IMAGES, decode, png_bytes

from airflow_provider_bgremoval.sandbox import imaging

PC = {"X-API-KEY": "sk_sandbox_pixelcut_key", "Accept": "image/*"}


def iou(alpha: Image.Image, truth: Image.Image) -> float:
    a = alpha.point(lambda v: 255 if v >= 128 else 0)
    b = truth.point(lambda v: 255 if v >= 128 else 0)
    inter = ImageChops.multiply(a, b).histogram()[255]
    union = ImageChops.lighter(a, b).histogram()[255]
    return inter / union


def horse_truth() -> Image.Image:
    """The horse silhouette (black on white in horse.png) as a 0/255 matte."""
    return Image.open(IMAGES / "horse.png").convert("L").point(lambda v: 255 if v < 128 else 0)


def shapes_truth() -> Image.Image:
    truth = Image.new("L", (360, 280), 0)
    draw = ImageDraw.Draw(truth)
    draw.ellipse([40, 60, 180, 220], fill=255)
    draw.rectangle([200, 40, 320, 120], fill=255)
    draw.polygon([(230, 250), (300, 140), (340, 250)], fill=255)
    return truth


def subject_texture(size: tuple[int, int]) -> Image.Image:
    """A shaded, coloured subject (so it is not a flat colour)."""
    w, h = size
    shade = Image.linear_gradient("L").resize((w, h)).point(lambda v: 40 + v // 3)
    return Image.merge(
        "RGB",
        [
            shade.point(lambda v: min(255, v + 60)),
            shade.point(lambda v: v + 15),
            shade.point(lambda v: v // 2),
        ],
    )


def backdrop(kind: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    if kind == "plain":
        return Image.new("RGB", size, (236, 238, 242))
    if kind == "gradient":
        g = Image.linear_gradient("L").rotate(90).resize(size)
        v = Image.linear_gradient("L").resize(size)
        return Image.merge(
            "RGB",
            [g.point(lambda x: 150 + x // 3), v.point(lambda x: 190 + x // 5), Image.new("L", size, 228)],
        )
    rng = random.Random(7)  # noisy / lightly textured
    noise = Image.frombytes("L", size, bytes(rng.randrange(0, 28) for _ in range(w * h)))
    base = Image.new("RGB", size, (205, 212, 222))
    return ImageChops.subtract(base, Image.merge("RGB", [noise] * 3))


def composite(truth: Image.Image, kind: str) -> bytes:
    img = backdrop(kind, truth.size)
    img.paste(
        subject_texture(truth.size), mask=truth.filter(ImageFilter.GaussianBlur(0.7))
    )  # anti-aliased edge
    return png_bytes(img)


@pytest.mark.parametrize(
    ("subject", "kind", "minimum"),
    [
        ("horse", "plain", 0.95),
        ("horse", "gradient", 0.95),
        ("horse", "noisy", 0.85),
        ("shapes", "plain", 0.95),
        ("shapes", "gradient", 0.95),
        ("shapes", "noisy", 0.85),
    ],
)
def test_cutout_matches_known_alpha(client: httpx.Client, subject: str, kind: str, minimum: float) -> None:
    truth = horse_truth() if subject == "horse" else shapes_truth()
    r = client.post("/v1/remove-background", headers=PC, files={"image": ("c.png", composite(truth, kind))})
    assert r.status_code == 200
    alpha = decode(r.content).getchannel("A")
    score = iou(alpha, truth)
    assert score >= minimum, f"IoU {score:.3f} on {subject}/{kind}"


def test_existing_alpha_is_respected(client: httpx.Client) -> None:
    truth = shapes_truth()
    rgba = subject_texture(truth.size).convert("RGBA")
    rgba.putalpha(truth)
    r = client.post(
        "/v1/remove",
        headers={"x-api-key": "pk_sandbox_poof_key"},
        files={"image_file": ("a.png", png_bytes(rgba))},
    )
    assert decode(r.content).getchannel("A").tobytes() == truth.tobytes()


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png", "astronaut.jpg", "rocket.jpg", "horse.png"])
def test_real_photos_always_get_a_cutout(client: httpx.Client, name: str) -> None:
    data = (IMAGES / name).read_bytes()
    r1 = client.post("/v1/remove-background", headers=PC, files={"image": (name, data)})
    r2 = client.post(
        "/api/v2/remove-background",
        auth=("px_sandbox_id", "px_sandbox_secret"),
        files={"image": (name, data)},
    )
    r3 = client.post(
        "/v1/remove", headers={"x-api-key": "pk_sandbox_poof_key"}, files={"image_file": (name, data)}
    )
    for r in (r1, r2, r3):
        assert r.status_code == 200, r.text
        alpha = decode(r.content).getchannel("A")
        assert alpha.getextrema() == (0, 255)
    assert (
        r1.content == client.post("/v1/remove-background", headers=PC, files={"image": (name, data)}).content
    )  # deterministic


def test_segmentation_is_fast_for_small_images() -> None:
    img = imaging.decode((IMAGES / "coffee.png").read_bytes()).image  # 600x400, a busy photo
    product = imaging.decode(composite(horse_truth(), "gradient")).image
    imaging.segment(img)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        imaging.segment(product)
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[2] < 0.1, timings


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_starts_with_config_and_free_port(tmp_path: Path) -> None:
    config = tmp_path / "sandbox.json"
    config.write_text(
        json.dumps(
            {
                "keys": {"pixelcut": {"sk_cli": 7}, "poof": {"pk_cli": {"credits": 3}}},
                "pixelcut_credits_type": "string",
            }
        )
    )
    url_file = tmp_path / "url"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_bgremoval.sandbox",
            "--port",
            "0",
            "--config",
            str(config),
            "--url-file",
            str(url_file),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("bgremoval-sandbox: serving on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[1]
        assert url_file.read_text().strip() == url
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx.get(url + "/v1/credits", headers={"X-API-KEY": "sk_cli"})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        assert response.json() == {"credits_remaining": "7"}
        me = httpx.get(url + "/v1/me", headers={"x-api-key": "pk_cli"}).json()
        assert me["maxCredits"] - me["usedCredits"] == 3
        assert (
            httpx.get(url + "/v1/credits", headers={"X-API-KEY": "sk_sandbox_pixelcut_key"}).status_code
            == 401
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_rejects_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"kyes": {}}))
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_bgremoval.sandbox", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "kyes" in done.stderr
