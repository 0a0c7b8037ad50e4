"""A small PNG chart of one account's balance history and its forecast line (Pillow only)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from PIL import Image, ImageDraw, ImageFont

from airflow_provider_bgremoval.forecast import Forecast, Sample, format_rate
from airflow_provider_bgremoval.hooks.base import format_credits

#: Default chart size in pixels (width, height).
CHART_SIZE = (480, 240)
BACKGROUND = (255, 255, 255)
AXIS = (120, 120, 120)
HISTORY = (31, 119, 180)
FORECAST = (214, 39, 40)
TEXT = (40, 40, 40)
_MARGIN = (52, 28, 14, 26)  # left, top, right, bottom


@dataclass(frozen=True)
class ChartFrame:
    """
    Maps times and credit amounts to pixels of the plot area.

    :param start: the time at the left edge.
    :param end: the time at the right edge.
    :param top: the credits at the top edge (the bottom edge is 0).
    :param size: the image size.
    """

    start: datetime
    end: datetime
    top: Decimal
    size: tuple[int, int]

    def point(self, at: datetime, credits: Decimal) -> tuple[float, float]:
        """
        The pixel of a reading.

        :param at: the time.
        :param credits: the amount.
        """
        left, top, right, bottom = _MARGIN
        width, height = self.size[0] - left - right, self.size[1] - top - bottom
        span = max((self.end - self.start).total_seconds(), 1.0)
        x = left + width * (at - self.start).total_seconds() / span
        y = top + height * (1 - float(credits / self.top)) if self.top > 0 else top + height
        return x, y


def forecast_end(forecast: Forecast) -> tuple[datetime, Decimal] | None:
    """
    Where the forecast line ends: at 0 credits, or at the end of the lead time if that comes first.

    :param forecast: the forecast (``None`` is returned when it has no burn rate).
    """
    if forecast.burn_rate is None or forecast.burn_rate <= 0:
        return None
    lead_end = forecast.at + timedelta(days=forecast.forecast_days)
    out = forecast.runs_out_at
    if out is not None and out <= lead_end:
        return out, Decimal(0)
    left = forecast.remaining - forecast.burn_rate * Decimal(str(forecast.forecast_days))
    return lead_end, left


def chart_frame(
    samples: Sequence[Sample], forecast: Forecast, size: tuple[int, int] = CHART_SIZE
) -> ChartFrame:
    """
    The frame that shows every reading and the whole lead time.

    :param samples: the history, oldest first (not empty).
    :param forecast: its forecast.
    :param size: the image size.
    """
    end = forecast.at + timedelta(days=forecast.forecast_days)
    return ChartFrame(samples[0].at, end, axis_top(max(s.remaining for s in samples)), size)


def axis_top(highest: Decimal) -> Decimal:
    """
    The credits at the top of the plot: 10 % above the highest reading, rounded up to two significant
    digits, so the axis label is that exact amount (``0.55``, ``1400``), never a rounding of it.

    :param highest: the highest reading (1 when there is no positive one).
    """
    if highest <= 0:
        return Decimal(1)
    above = highest * Decimal("1.1")
    step = Decimal(1).scaleb(above.adjusted() - 1)
    return (above / step).to_integral_value(rounding=ROUND_CEILING) * step


def render_chart(samples: Sequence[Sample], forecast: Forecast, size: tuple[int, int] = CHART_SIZE) -> bytes:
    """
    The PNG bytes: the readings (blue), the forecast to 0 or to the end of the lead time (red), axes
    and a title with the account, balance, burn rate and run-out date.

    :param samples: the history, oldest first (not empty).
    :param forecast: the forecast made from it.
    :param size: width and height in pixels.
    """
    frame = chart_frame(samples, forecast, size)
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    _axes(draw, frame)
    points = [frame.point(s.at, s.remaining) for s in samples]
    if len(points) > 1:
        draw.line(points, fill=HISTORY, width=2)
    for x, y in points:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=HISTORY)
    end = forecast_end(forecast)
    if end is not None:
        draw.line([points[-1], frame.point(*end)], fill=FORECAST, width=2)
    draw.text((_MARGIN[0], 6), _title(forecast), fill=TEXT, font=ImageFont.load_default())
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _axes(draw: ImageDraw.ImageDraw, frame: ChartFrame) -> None:
    left, top, right, bottom = _MARGIN
    width, height = frame.size
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill=AXIS, width=1)
    font = ImageFont.load_default()
    draw.text((4, top - 4), format_credits(frame.top), fill=TEXT, font=font)
    draw.text((4, height - bottom - 8), "0", fill=TEXT, font=font)
    draw.text((left, height - bottom + 6), frame.start.date().isoformat(), fill=TEXT, font=font)
    end_label = frame.end.date().isoformat()
    draw.text((width - right - 6 * len(end_label), height - bottom + 6), end_label, fill=TEXT, font=font)


def _title(forecast: Forecast) -> str:
    head = f"{forecast.conn_id}: {format_credits(forecast.remaining)} credits"
    if forecast.burn_rate is None:
        return head
    rate = format_rate(forecast.burn_rate)
    out = forecast.runs_out_at
    return f"{head}, {rate}/day" + (f", out {out.date().isoformat()}" if out is not None else "")
