"""Marketplace presets as data, each citing its rule (docs/renditions.md; facts retrieved 2026-12).

Marketplaces change their rules: every value here is a default a spec can override; the rules checked
(:mod:`.compliance`) are the published ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from airflow_provider_bgremoval.renditions.compliance import (
    Aspect,
    BorderColor,
    BorderLight,
    Fill,
    Formats,
    Limits,
    Opaque,
    Sides,
    Srgb,
)
from airflow_provider_bgremoval.renditions.spec import Preset

WHITE = (255, 255, 255)
# The marketplaces write "10 MB" and "16 MB" without saying which megabyte; the decimal one is the
# stricter reading, so a rendition that passes here is not over the limit under either reading.
MB = 1_000_000

AMAZON_MAIN = Preset(
    name="amazon_main",
    fields={
        "format": "jpeg",
        "quality": 95,
        "subsampling": "4:4:4",
        "background": "#ffffff",
        "aspect": "1:1",
        "fill": 0.85,
        "min_size": 1000,
        "max_size": 10_000,
    },
    rules=(
        BorderColor(rgb=WHITE, tolerance=0),
        Opaque(),
        Fill(minimum=0.85),
        Sides(min_long=1000),
        Sides(min_long=500, name="long_side_hard_min_500"),
        Sides(min_long=1600, required=False, name="long_side_recommended_1600"),
        Sides(max_long=10_000),
        Limits(max_bytes=10 * MB),
        Formats(allowed=("jpeg", "png")),
        Srgb(),
    ),
    source=(
        "Amazon MAIN image: pure white background, exactly RGB 255,255,255 (near-white is rejected by "
        "automated checks); the product spans at least 85 % of the frame; longest side >= 1,000 px to "
        "enable zoom (1,600 recommended), hard minimum 500 px, at most 10,000 px per side and ~10 MB; "
        "JPEG preferred, PNG accepted, WebP not accepted; sRGB; PNG transparency is not rendered. "
        "Amazon seller guides as summarised by quickpixel.co, cherryshot.ai, changethisfile.com, "
        "retouchable.ai (2025-2026)"
    ),
    urls=(
        "https://quickpixel.co",
        "https://cherryshot.ai",
        "https://changethisfile.com",
        "https://retouchable.ai",
    ),
)

GOOGLE_MERCHANT = Preset(
    name="google_merchant",
    fields={
        "format": "jpeg",
        "quality": 92,
        "background": "#ffffff",
        "aspect": "1:1",
        "fill": 0.85,
        "min_size": 100,
        "max_size": 8000,
    },
    rules=(
        Sides(min_short=100),
        Sides(min_short=800, required=False, name="recommended_800"),
        Limits(max_bytes=16 * MB, max_pixels=64_000_000),
        Formats(allowed=("jpeg", "png", "webp")),
        Aspect(ratio=1.0, required=False),
        BorderLight(minimum=235, required=False),
        Fill(minimum=0.75, maximum=0.90, required=False, name="fill_advised_75_90"),
    ),
    source=(
        "Google Merchant Center: white or light neutral background recommended for the main image; "
        "75-90 % fill commonly advised; minimum 100x100 px (250x250 for apparel), 800x800 or more "
        "recommended, at most 64 MP and 16 MB; JPEG, PNG, WebP, non-animated GIF; square (1:1) preferred. "
        "Summaries by changethisfile.com, gmccheck.com, pic1.ai (2026)"
    ),
    urls=("https://changethisfile.com", "https://gmccheck.com", "https://pic1.ai"),
)

SHOPIFY_SQUARE = Preset(
    name="shopify_square",
    fields={"format": "jpeg", "quality": 90, "background": "#ffffff", "size": 2048, "fit": "contain"},
    rules=(
        Aspect(ratio=1.0),
        Sides(min_long=2048, required=False, name="recommended_2048"),
        Formats(allowed=("jpeg", "png", "webp")),
    ),
    source=(
        "Shopify: square 2,048x2,048 px recommended for zoom; JPEG, PNG, WebP; keep every product image "
        "the same aspect ratio. As recorded in the project's marketplace notes (retrieved 2026-12), which "
        "cite no page for it: verify in Shopify's help center"
    ),
)

EBAY = Preset(
    name="ebay",
    fields={"format": "jpeg", "quality": 90, "background": "#ffffff", "min_size": 500},
    rules=(
        Sides(min_long=500),
        Sides(min_long=1600, required=False, name="long_side_recommended_1600"),
        Formats(allowed=("jpeg", "png")),
    ),
    source=(
        "eBay: longest side >= 500 px, 1,600 px recommended; JPEG, PNG. As recorded in the project's "
        "marketplace notes (retrieved 2026-12), which cite no page for it: verify in eBay's seller help"
    ),
)

#: The built-in presets by name.
PRESETS: Mapping[str, Preset] = MappingProxyType(
    {preset.name: preset for preset in (AMAZON_MAIN, GOOGLE_MERCHANT, SHOPIFY_SQUARE, EBAY)}
)
