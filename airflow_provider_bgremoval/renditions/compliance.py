"""Compliance checks of a rendition, measured on the bytes written (docs/renditions.md).

Every check decodes what was encoded, so a rendition is never reported compliant on what the
renderer meant to write. A rule is data (a frozen dataclass); :func:`spec_rules` derives the checks a
spec implies, and a preset adds the marketplace's own (:mod:`.presets`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image, ImageChops, ImageCms, ImageOps

from airflow_provider_bgremoval.imaging import bomb_warnings_ignored, normalise_mode

if TYPE_CHECKING:
    from airflow_provider_bgremoval.renditions.spec import Rendition, RenditionSpec

#: EXIF tag of the GPS block.
GPS_IFD = 0x8825
Rgb = tuple[int, int, int]
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Measured:
    """
    Facts read back from a rendition's encoded bytes.

    :param format: the format written (``jpeg``, ``png``, ``webp``).
    :param width: width in pixels, upright (its EXIF orientation applied).
    :param height: height in pixels, upright.
    :param mode: Pillow mode as decoded.
    :param nbytes: size of the file.
    :param profile: description of the embedded ICC profile (``None``: none embedded).
    :param exif_tags: number of EXIF tags written.
    :param gps: True when a GPS block was written.
    :param dpi: resolution written (``None``: none).
    :param min_alpha: the smallest alpha value (255 for an image without alpha).
    :param border: per channel ``(min, max)`` of the outermost pixel ring, RGBA.
    :param fill: the subject's fill ratio on the canvas (0 when no subject pixel was found).
    :param subject_box: the box of non-background pixels ``(left, top, right, bottom)``, if any.
    :param open_border: like ``border``, over the ring's pixels outside the box the renderer placed the
        subject in (empty: the subject covers the whole ring; ``None``: not given, the whole ring is read).
    """

    format: str
    width: int
    height: int
    mode: str
    nbytes: int
    profile: str | None
    exif_tags: int
    gps: bool
    dpi: float | None
    min_alpha: int
    border: tuple[tuple[int, int], ...]
    fill: float
    subject_box: tuple[int, int, int, int] | None
    open_border: tuple[tuple[int, int], ...] | None = None

    @property
    def long_side(self) -> int:
        """The longer side, px."""
        return max(self.width, self.height)


@dataclass(frozen=True)
class CheckResult:
    """
    The outcome of one check.

    :param name: the check's name (``border_white``, ``fill``…).
    :param passed: whether the rendition meets it.
    :param message: what was measured against what was required, in words.
    :param required: False for advice (a recommendation): a failure does not make it non-compliant.
    :param origin: ``spec`` (implied by the spec) or ``preset:<name>``.
    """

    name: str
    passed: bool
    message: str
    required: bool = True
    origin: str = "spec"

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for the manifest."""
        return {key: getattr(self, key) for key in ("name", "passed", "required", "origin", "message")}


@dataclass(frozen=True)
class Verdict:
    """
    Every check of one rendition.

    :param checks: the results, spec checks first.
    """

    checks: tuple[CheckResult, ...]

    @property
    def compliant(self) -> bool:
        """True when every required check passed."""
        return all(check.passed for check in self.checks if check.required)

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the required checks that failed."""
        return tuple(check.name for check in self.checks if check.required and not check.passed)

    @property
    def advice(self) -> tuple[str, ...]:
        """Names of the advisory checks that failed."""
        return tuple(check.name for check in self.checks if not check.required and not check.passed)

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for the manifest."""
        passed = [check.name for check in self.checks if check.passed]
        return {
            "compliant": self.compliant,
            "passed": passed,
            "failed": list(self.failed),
            "advice": list(self.advice),
            "checks": [check.as_dict() for check in self.checks],
        }


@dataclass(frozen=True)
class Rule:
    """
    One compliance rule (subclasses implement ``_check``).

    :param required: False for a recommendation (reported, not failing).
    :param name: the check's name; default: the rule's own.
    """

    required: bool = field(default=True, kw_only=True)
    name: str = field(default="", kw_only=True)
    #: The check's name when ``name`` is unset (default: the class name in lower case).
    default_name: ClassVar[str] = ""

    @property
    def check_name(self) -> str:
        """The name the result carries."""
        return self.name or self._default_name()

    def _default_name(self) -> str:
        return self.default_name or type(self).__name__.lower()

    def describe(self) -> str:
        """A stable text of the rule (for fingerprints and docs)."""
        return f"{self.check_name}:{self!r}"

    def evaluate(self, measured: Measured, origin: str = "spec") -> CheckResult:
        """
        Check ``measured`` against this rule.

        :param measured: facts read back from the rendition.
        :param origin: where the rule comes from (``spec``, ``preset:<name>``).
        """
        passed, message = self._check(measured)
        return CheckResult(self.check_name, passed, message, self.required, origin)

    def _check(self, measured: Measured) -> tuple[bool, str]:
        raise NotImplementedError


def _bounds(number_format: str, *bounds: tuple[str, int | None]) -> str:
    """The bounds that are set, ``"<label> <value>"`` joined by commas, values in ``number_format``."""
    return ", ".join(f"{label} {value:{number_format}}" for label, value in bounds if value is not None)


@dataclass(frozen=True)
class BorderColor(Rule):
    """
    Every pixel of the outermost ring is this opaque colour, within ``tolerance`` per channel.

    :param rgb: the colour.
    :param tolerance: the largest allowed difference per channel (0: exact).
    :param outside_subject: read only the ring's pixels outside the subject as placed
        (:attr:`Measured.open_border`): the background the spec asked for, where the canvas shows it; a
        marketplace's border rule reads the whole ring (a subject touching the edge fails it).
    """

    rgb: Rgb = (255, 255, 255)
    tolerance: int = 0
    outside_subject: bool = False

    def _default_name(self) -> str:
        return "border_white" if self.rgb == (255, 255, 255) else "border_color"

    def _check(self, measured: Measured) -> tuple[bool, str]:
        ring = measured.border
        if self.outside_subject and measured.open_border is not None:
            ring = measured.open_border
        if not ring:
            return True, "no border pixel is background: the subject as placed covers the whole border"
        target = (*self.rgb, 255)
        worst = max(
            max(abs(low - want), abs(high - want)) for (low, high), want in zip(ring, target, strict=True)
        )
        passed = worst <= self.tolerance
        wanted = "exactly" if self.tolerance == 0 else f"within {self.tolerance} of"
        return passed, f"border pixels {wanted} RGB{self.rgb}: worst channel deviation {worst}"


@dataclass(frozen=True)
class BorderLight(Rule):
    """
    Every pixel of the outermost ring is opaque and at least ``minimum`` in each channel (a light background).

    :param minimum: the smallest allowed channel value.
    """

    minimum: int = 235

    default_name: ClassVar[str] = "border_light"

    def _check(self, measured: Measured) -> tuple[bool, str]:
        darkest = min(low for low, _ in measured.border)
        return darkest >= self.minimum, f"darkest border channel {darkest} (at least {self.minimum} wanted)"


@dataclass(frozen=True)
class Fill(Rule):
    """
    The subject's fill ratio lies in ``[minimum, maximum]``.

    :param minimum: the smallest allowed fill (0: none).
    :param maximum: the largest allowed fill.
    """

    minimum: float = 0.0
    maximum: float = 1.0

    def _check(self, measured: Measured) -> tuple[bool, str]:
        passed = self.minimum <= measured.fill <= self.maximum
        low, high = _percent(self.minimum), _percent(self.maximum)
        wanted = f"at least {low}" if self.maximum >= 1 else f"{low}-{high}"
        # rounded towards the bound it misses, so a fill that fails never reads as the bound itself
        hundredths = measured.fill * 10_000  # of a percent; the 1e-6 absorbs float error (0.29 * 10_000)
        shown = (
            math.ceil(hundredths - 1e-6) if measured.fill > self.maximum else math.floor(hundredths + 1e-6)
        )
        return passed, f"subject fills {_percent(shown / 10_000)} of the canvas ({wanted} wanted)"


def _percent(ratio: float) -> str:
    """``ratio`` as a percentage to 0.01 % without trailing zeros (``85%``, ``84.95%``)."""
    return f"{ratio * 100:.2f}".rstrip("0").rstrip(".") + "%"


@dataclass(frozen=True)
class Sides(Rule):
    """
    The image's sides are within bounds (``None``: unbounded).

    :param min_long: smallest long side.
    :param max_long: largest long side.
    :param min_short: smallest short side.
    """

    min_long: int | None = None
    max_long: int | None = None
    min_short: int | None = None

    def _default_name(self) -> str:
        if self.min_short is not None:
            return f"short_side_min_{self.min_short}"
        if self.min_long is not None:
            return f"long_side_min_{self.min_long}"
        return f"long_side_max_{self.max_long}"

    def _check(self, measured: Measured) -> tuple[bool, str]:
        long, short = measured.long_side, min(measured.width, measured.height)
        passed = (
            (self.min_long is None or long >= self.min_long)
            and (self.max_long is None or long <= self.max_long)
            and (self.min_short is None or short >= self.min_short)
        )
        bounds = _bounds(
            "",
            ("long side >=", self.min_long),
            ("long side <=", self.max_long),
            ("short side >=", self.min_short),
        )
        return passed, f"{measured.width}x{measured.height} px ({bounds} wanted)"


@dataclass(frozen=True)
class ExactSize(Rule):
    """
    The image is exactly this size.

    :param size: ``(width, height)``.
    """

    size: tuple[int, int] = (1, 1)

    default_name: ClassVar[str] = "size"

    def _check(self, measured: Measured) -> tuple[bool, str]:
        width, height = self.size
        passed = (measured.width, measured.height) == self.size
        return passed, f"{measured.width}x{measured.height} px ({width}x{height} wanted)"


@dataclass(frozen=True)
class Aspect(Rule):
    """
    The image has this aspect ratio, to the pixel: the height is less than ``max(1, 1 / ratio)`` px from
    ``width / ratio`` (what rounding each side of a canvas to the pixel can move it), so a square is exact.

    :param ratio: width / height.
    """

    ratio: float = 1.0

    def _default_name(self) -> str:
        return "square" if self.ratio == 1 else "aspect"

    def _check(self, measured: Measured) -> tuple[bool, str]:
        expected_height = measured.width / self.ratio
        passed = abs(measured.height - expected_height) < max(1.0, 1 / self.ratio)
        ratio = measured.width / measured.height
        return passed, f"aspect {ratio:.4f} ({measured.width}x{measured.height}; {self.ratio:.4f} wanted)"


@dataclass(frozen=True)
class Limits(Rule):
    """
    The file is within size limits.

    :param max_bytes: largest file.
    :param max_pixels: largest width × height.
    """

    max_bytes: int | None = None
    max_pixels: int | None = None

    default_name: ClassVar[str] = "file_limits"

    def _check(self, measured: Measured) -> tuple[bool, str]:
        pixels = measured.width * measured.height
        passed = (self.max_bytes is None or measured.nbytes <= self.max_bytes) and (
            self.max_pixels is None or pixels <= self.max_pixels
        )
        wanted = _bounds(",", ("bytes <=", self.max_bytes), ("pixels <=", self.max_pixels))
        return passed, f"{measured.nbytes:,} bytes, {pixels:,} pixels ({wanted} wanted)"


@dataclass(frozen=True)
class Formats(Rule):
    """
    The file is in one of these formats.

    :param allowed: format names (``jpeg``, ``png``, ``webp``).
    """

    allowed: tuple[str, ...] = ()

    default_name: ClassVar[str] = "format"

    def _check(self, measured: Measured) -> tuple[bool, str]:
        return measured.format in self.allowed, f"{measured.format} ({' or '.join(self.allowed)} allowed)"


@dataclass(frozen=True)
class Opaque(Rule):
    """Every pixel is fully opaque (the marketplace does not render transparency)."""

    def _check(self, measured: Measured) -> tuple[bool, str]:
        return measured.min_alpha == 255, f"smallest alpha {measured.min_alpha} (255 wanted everywhere)"


@dataclass(frozen=True)
class Srgb(Rule):
    """
    The pixels are RGB (or grey, or a palette of RGB colours) and tagged sRGB, or untagged (read as sRGB).

    :param tagged: require the sRGB profile to be embedded.
    """

    tagged: bool = False

    def _check(self, measured: Measured) -> tuple[bool, str]:
        rgb = measured.mode in ("RGB", "RGBA", "L", "LA", "P", "PA") or measured.mode.startswith("I;16")
        profile = measured.profile
        tag_ok = ("srgb" in profile.lower()) if profile is not None else not self.tagged
        wanted = "an sRGB ICC profile embedded" if self.tagged else "an sRGB ICC profile or none"
        found = f"mode {measured.mode}, ICC profile {profile or 'none'}"
        return rgb and tag_ok, f"{found} (RGB, grey or palette pixels and {wanted} wanted)"


@dataclass(frozen=True)
class NoMetadata(Rule):
    """No EXIF (hence no GPS) block was written."""

    default_name: ClassVar[str] = "metadata_stripped"

    def _check(self, measured: Measured) -> tuple[bool, str]:
        passed = measured.exif_tags == 0 and not measured.gps
        return passed, f"{measured.exif_tags} EXIF tags, GPS {'present' if measured.gps else 'absent'}"


@dataclass(frozen=True)
class Dpi(Rule):
    """
    The file declares this resolution.

    :param dpi: dots per inch.
    """

    dpi: int = 72

    def _check(self, measured: Measured) -> tuple[bool, str]:
        written = measured.dpi
        passed = written is not None and round(written) == self.dpi
        return passed, f"{'no' if written is None else round(written)} dpi written ({self.dpi} wanted)"


def background_tolerance(spec: RenditionSpec) -> int:
    """How far a flat background may drift per channel: 0 lossless, 2 JPEG, 6 lossy WebP (4:2:0)."""
    if spec.format == "jpeg":
        return 2
    return 6 if spec.format == "webp" and not spec.lossless else 0


def spec_rules(spec: RenditionSpec) -> tuple[Rule, ...]:
    """
    The checks a spec implies: its format, size, aspect, long-side bounds, fill, background, colour,
    metadata and resolution.

    :param spec: the rendition spec.
    """
    rules: list[Rule] = [Formats(allowed=(spec.format,))]
    if spec.size is not None:
        rules.append(ExactSize(size=spec.size))
    if spec.aspect is not None:
        rules.append(Aspect(ratio=spec.aspect))
    if spec.min_size is not None:
        rules.append(Sides(min_long=spec.min_size, name="min_size"))
    if spec.max_size is not None:
        rules.append(Sides(max_long=spec.max_size, name="max_size"))
    if spec.fill is not None:
        rules.append(Fill(minimum=spec.fill))
    rgb = spec.background_rgb
    if rgb is not None:
        rules.append(
            BorderColor(
                rgb=rgb, tolerance=background_tolerance(spec), outside_subject=True, name="background"
            )
        )
    rules.append(Srgb(tagged=spec.embed_srgb))
    if spec.metadata == "strip":
        rules.append(NoMetadata())
    if spec.dpi is not None:
        rules.append(Dpi(dpi=spec.dpi))
    return tuple(rules)


def _profile(image: Image.Image) -> str | None:
    icc = image.info.get("icc_profile")
    if not icc:
        return None
    try:
        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except (OSError, ImageCms.PyCMSError):
        return "unreadable profile"


def _outside(strip: Box, covered: Box) -> list[Box]:
    """The parts of a one-pixel row or column ``strip`` outside the box ``covered``."""
    left, top, right, bottom = strip
    if right <= covered[0] or left >= covered[2] or bottom <= covered[1] or top >= covered[3]:
        return [strip]
    if bottom - top == 1:  # a row: what lies left and right of the box
        parts = [(left, top, min(right, covered[0]), bottom), (max(left, covered[2]), top, right, bottom)]
    else:
        parts = [(left, top, right, min(bottom, covered[1])), (left, max(top, covered[3]), right, bottom)]
    return [part for part in parts if part[2] > part[0] and part[3] > part[1]]


def _border(image: Image.Image, covered: Box | None = None) -> tuple[tuple[int, int], ...]:
    """
    Per RGBA channel ``(min, max)`` of the outermost pixel ring of an RGB or RGBA image, leaving out its
    pixels inside ``covered`` (empty when none is left).
    """
    width, height = image.size
    strips: list[Box] = [
        (0, 0, width, 1),
        (0, height - 1, width, height),
        (0, 0, 1, height),
        (width - 1, 0, width, height),
    ]
    if covered is not None:
        strips = [part for strip in strips for part in _outside(strip, covered)]
        if not strips:
            return ()
    extremes: list[Any] = [image.crop(box).getextrema() for box in strips]
    bands = tuple(
        (min(strip[band][0] for strip in extremes), max(strip[band][1] for strip in extremes))
        for band in range(len(image.getbands()))
    )
    return bands if len(bands) == 4 else (*bands, (255, 255))


def subject_box(
    image: Image.Image, background: Rgb | None, tolerance: int = 0
) -> tuple[int, int, int, int] | None:
    """
    The bounding box of the non-background pixels: alpha above 0 on a transparent background, any
    channel differing from ``background`` by more than ``tolerance`` on an opaque one.

    :param image: the image, RGB or RGBA.
    :param background: the background colour (``None``: transparent).
    :param tolerance: how far a background pixel may drift per channel (a lossy format's noise,
        :func:`background_tolerance`).
    """
    if background is None:
        return image.getchannel("A").getbbox() if image.mode == "RGBA" else (0, 0, *image.size)
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    difference = ImageChops.difference(rgb, Image.new("RGB", rgb.size, background))
    if tolerance > 0:
        difference = difference.point(lambda value: 255 if value > tolerance else 0)
    return difference.getbbox()


def fill_ratio(box: tuple[int, int, int, int] | None, size: tuple[int, int]) -> float:
    """
    How much of the canvas the box spans along its constraining dimension: ``max(box_w / W, box_h / H)``
    (on a square canvas: the box's longer side over the side, as marketplaces measure it).

    :param box: the subject's box (``None``: no subject, 0).
    :param size: the canvas ``(W, H)``.
    """
    if box is None:
        return 0.0
    left, top, right, bottom = box
    return max((right - left) / size[0], (bottom - top) / size[1])


def measure(data: bytes, background: Rgb | None, tolerance: int = 0, covered: Box | None = None) -> Measured:
    """
    Decode a rendition's bytes and read the facts its checks judge.

    :param data: the encoded rendition.
    :param background: the background colour it was rendered on (``None``: transparent).
    :param tolerance: how far its background may drift per channel in this format
        (:func:`background_tolerance`): such pixels are background, not subject, for the fill.
    :param covered: the box the renderer placed the subject in, with what resampling and the encoder
        spread around it (``None``: unknown): the ring outside it is :attr:`Measured.open_border`.
    """
    with bomb_warnings_ignored(), Image.open(io.BytesIO(data)) as image:
        image.load()
        exif = image.getexif()
        dpi = image.info.get("dpi")
        upright = ImageOps.exif_transpose(image)  # as a marketplace shows it: its EXIF orientation applied
        normalised = normalise_mode(upright)  # 16-bit scaled, not clipped; tRNS and palette alpha kept
        pixels = normalised if normalised.mode in ("RGB", "RGBA") else normalised.convert("RGBA")
        box = subject_box(pixels, background, tolerance)
        alpha = pixels.getchannel("A").getextrema()[0] if pixels.mode == "RGBA" else 255
        return Measured(
            format=(image.format or "").lower(),
            width=pixels.width,
            height=pixels.height,
            mode=image.mode,
            nbytes=len(data),
            profile=_profile(image),
            exif_tags=len(exif),
            gps=GPS_IFD in exif,
            dpi=None if dpi is None else float(dpi[0]),
            min_alpha=int(alpha),  # type: ignore[arg-type]
            border=_border(pixels),
            fill=fill_ratio(box, pixels.size),
            subject_box=box,
            open_border=None if covered is None else _border(pixels, covered),
        )


def _rules(rendition: Rendition) -> list[tuple[Rule, str]]:
    """Every rule of a rendition with its origin: the spec's (:func:`spec_rules`), then its preset's."""
    origin = f"preset:{rendition.spec.preset}" if rendition.spec.preset else "spec"
    return [(rule, "spec") for rule in spec_rules(rendition.spec)] + [
        (rule, origin) for rule in rendition.rules
    ]


def judge(rendition: Rendition, measured: Measured) -> Verdict:
    """
    The verdict of a rendition: the spec's checks (:func:`spec_rules`), then its preset's.

    :param rendition: the rendition (spec and preset rules).
    :param measured: facts read back from its bytes (:func:`measure`).
    """
    return Verdict(tuple(rule.evaluate(measured, origin) for rule, origin in _rules(rendition)))


def unreachable(rendition: Rendition, longest: int) -> tuple[CheckResult, ...]:
    """
    The required checks a rendition is certain to fail when its long side can be at most ``longest`` px:
    each long-side minimum (the spec's ``min_size``, a preset's ``Sides``) above it. Empty: it may comply.

    :param rendition: the rendition.
    :param longest: the largest long side it can have
        (:func:`~airflow_provider_bgremoval.renditions.renderer.largest_long_side`).
    """
    return tuple(
        CheckResult(
            rule.check_name,
            False,
            f"at most {longest} px on the long side ({rule.min_long} wanted)",
            rule.required,
            origin,
        )
        for rule, origin in _rules(rendition)
        if isinstance(rule, Sides) and rule.required and rule.min_long is not None and longest < rule.min_long
    )
