"""The balance chart: a valid PNG of the expected size with the forecast line drawn."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from PIL import Image, ImageDraw

from airflow_provider_bgremoval.credit_chart import (
    CHART_SIZE,
    FORECAST,
    HISTORY,
    chart_frame,
    forecast_end,
    render_chart,
)
from airflow_provider_bgremoval.forecast import Sample, forecast

DAY0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def daily(*balances: float) -> list[Sample]:
    return [Sample(DAY0 + timedelta(days=d), Decimal(str(b))) for d, b in enumerate(balances)]


def colour_count(image: Image.Image, colour: tuple[int, int, int]) -> int:
    return sum(1 for pixel in image.get_flattened_data() if pixel == colour)


def test_chart_is_a_png_with_the_forecast_line_to_zero() -> None:
    samples = daily(600, 550, 500, 450, 600, 550, 500, 450, 400, 350, 300)
    fc = forecast("poof_default", "poof", samples, 7)
    data = render_chart(samples, fc)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) < 30_000
    image = Image.open(io.BytesIO(data))
    image.load()
    assert (image.format, image.size, image.mode) == ("PNG", CHART_SIZE, "RGB")
    frame = chart_frame(samples, fc)
    end = forecast_end(fc)
    assert end is not None and end[1] == 0  # 300 credits at 50/day: out in 6 days, inside the 7
    (x0, y0), (x1, y1) = frame.point(fc.at, fc.remaining), frame.point(*end)
    assert x1 > x0 and y1 > y0  # later and lower
    for t in (0.2, 0.4, 0.6, 0.8):  # pixels on the forecast segment are the forecast's colour
        x, y = round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
        near = {image.getpixel((x + dx, y + dy)) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
        assert FORECAST in near, (t, x, y, near)
    assert colour_count(image, HISTORY) > 100


def test_chart_without_a_burn_rate_has_no_forecast_line() -> None:
    samples = daily(100)
    image = Image.open(io.BytesIO(render_chart(samples, forecast("c", None, samples, 7), size=(320, 160))))
    assert image.size == (320, 160)
    assert colour_count(image.convert("RGB"), FORECAST) == 0


def test_a_lasting_balance_stops_the_line_at_the_end_of_the_lead_time() -> None:
    samples = daily(1000, 990)
    fc = forecast("c", "poof", samples, 7)
    assert forecast_end(fc) == (fc.at + timedelta(days=7), Decimal(920))


def test_the_title_writes_a_small_burn_rate() -> None:
    from airflow_provider_bgremoval.credit_chart import _title

    fc = forecast(
        "c", None, [Sample(DAY0, Decimal("0.106")), Sample(DAY0 + timedelta(days=14), Decimal("0.05"))], 30
    )
    assert _title(fc) == "c: 0.05 credits, 0.004/day, out 2026-01-27"


def test_the_credit_axis_is_labelled_with_its_real_top(monkeypatch: pytest.MonkeyPatch) -> None:
    # A small fractional balance: the top of the plot was 0.55 credits but labelled "1", so a reading
    # of 0.5 looked like 0.9; a large one was labelled a rounded 1357 where the top was 1357.4.
    drawn: list[str] = []
    real_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(
        ImageDraw.ImageDraw,
        "text",
        lambda self, xy, text, *a, **k: drawn.append(text) or real_text(self, xy, text, *a, **k),
    )
    for balances, top, label in (
        ((0.5, 0.4), Decimal("0.55"), "0.55"),
        ((1234, 1200), Decimal(1400), "1400"),
    ):
        samples = daily(*balances)
        fc = forecast("c", "pixian", samples, 7)
        frame = chart_frame(samples, fc)
        assert frame.top == top and frame.top >= max(s.remaining for s in samples)
        drawn.clear()
        render_chart(samples, fc)
        assert label in drawn
