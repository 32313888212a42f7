"""Procedural street scenes written in the Cityscapes or StreetHazards on-disk layout.

One scene generator, two writers. :func:`sample_scene` draws every random choice of an image into a
:class:`SceneSpec` (camera, road layout, facades, objects, weather); :func:`render` turns a spec into
an RGB image and a map of scene :class:`Part` values without further randomness (its texture noise
comes from ``spec.texture_seed``). The writers map parts to the dataset's stored label values.

The geometry is a pinhole camera over a flat ground plane: a ground point at lateral offset ``X``
and depth ``D`` (metres) appears at ``x = vx + f X / D``, ``y = horizon + f h / D`` (camera height
``h``), so road, sidewalks, lane marks, facades and objects shrink towards the vanishing point.
Every part has its own colour distribution and texture (tiles, windows, fence slats, foliage noise),
and each image gets its own weather, global illumination, colour cast, shading, cast shadows, blur
and sensor noise. Look-alike pairs (road/sidewalk, terrain/vegetation, wall/building), thin and small
objects (poles, signs, distant people), occlusion and shadows make a small segmenter err.

Cityscapes style adds the ego-vehicle hood and an out-of-roi border (both ignored, trainId 255) and
static clutter (ignored). StreetHazards style has no hood, and its test split contains anomalies:
blobs, stars and polygons with checkerboard, rainbow or stripe textures never seen in training.

Each image draws from ``numpy.random.default_rng([seed, crc32(split), index])``, so files do not
depend on generation order and the same seed gives byte-identical files.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np

from synthcp3d.data.cityscapes import LABEL_IDS, LABELS
from synthcp3d.data.io import write_png
from synthcp3d.data.streethazards import SPLIT_FOLDERS, STREETHAZARDS_CLASSES

__all__ = [
    "Part",
    "SceneObject",
    "SceneSpec",
    "Facade",
    "make_scene_dataset",
    "render",
    "sample_scene",
    "to_cityscapes",
    "to_streethazards",
]


class Part(IntEnum):
    """Scene parts drawn by the renderer; each writer maps them to its dataset's label values."""

    VOID = 0
    EGO = 1
    BORDER = 2
    STATIC = 3
    ROAD = 4
    ROAD_LINE = 5
    SIDEWALK = 6
    BUILDING = 7
    WALL = 8
    FENCE = 9
    POLE = 10
    TRAFFIC_LIGHT = 11
    TRAFFIC_SIGN = 12
    VEGETATION = 13
    TERRAIN = 14
    SKY = 15
    PERSON = 16
    CAR = 17
    TRUCK = 18
    ANOMALY = 19


_P = Part
_CS_NAME = {
    _P.VOID: "unlabeled", _P.EGO: "ego vehicle", _P.BORDER: "out of roi", _P.STATIC: "static",
    _P.ROAD: "road", _P.ROAD_LINE: "road", _P.SIDEWALK: "sidewalk", _P.BUILDING: "building",
    _P.WALL: "wall", _P.FENCE: "fence", _P.POLE: "pole", _P.TRAFFIC_LIGHT: "traffic light",
    _P.TRAFFIC_SIGN: "traffic sign", _P.VEGETATION: "vegetation", _P.TERRAIN: "terrain", _P.SKY: "sky",
    _P.PERSON: "person", _P.CAR: "car", _P.TRUCK: "truck",
}
# CARLA-rendered StreetHazards: sky is unlabeled, grass/traffic lights/clutter are "other".
_SH_NAME = {
    _P.VOID: "unlabeled", _P.EGO: "unlabeled", _P.BORDER: "unlabeled", _P.STATIC: "other",
    _P.ROAD: "road", _P.ROAD_LINE: "road line", _P.SIDEWALK: "sidewalk", _P.BUILDING: "building",
    _P.WALL: "wall", _P.FENCE: "fence", _P.POLE: "pole", _P.TRAFFIC_LIGHT: "other",
    _P.TRAFFIC_SIGN: "traffic sign", _P.VEGETATION: "vegetation", _P.TERRAIN: "other", _P.SKY: "unlabeled",
    _P.PERSON: "pedestrian", _P.CAR: "car", _P.TRUCK: "car", _P.ANOMALY: "anomaly",
}
_CS_LUT = np.array([LABEL_IDS[_CS_NAME.get(p, "unlabeled")] for p in Part], dtype=np.uint8)
_SH_LUT = np.array([STREETHAZARDS_CLASSES.index(_SH_NAME[p]) + 1 for p in Part], dtype=np.uint8)
_CS_COLOR = np.zeros((256, 3), dtype=np.uint8)
for _lab in LABELS:
    if _lab.id >= 0:
        _CS_COLOR[_lab.id] = _lab.color


def to_cityscapes(parts: np.ndarray) -> np.ndarray:
    """Part map ``(H, W)`` uint8 -> Cityscapes labelIds ``(H, W)`` uint8 (anomalies are not allowed)."""
    if np.any(parts == Part.ANOMALY):
        raise ValueError("Cityscapes has no anomaly class; sample scenes with anomalies=False")
    return _CS_LUT[parts]


def to_streethazards(parts: np.ndarray) -> np.ndarray:
    """Part map ``(H, W)`` uint8 -> StreetHazards annotation values ``(H, W)`` uint8 (class + 1)."""
    return _SH_LUT[parts]


# ----------------------------------------------------------------------------------------------------
# Scene specification
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Facade:
    """A stretch of roadside at lateral offset ``side * offset`` between depths ``d0`` and ``d1`` (m).

    ``kind`` fills heights ``0..low`` (m); ``upper`` (or None) fills ``low..high``.
    """

    side: int
    d0: float
    d1: float
    kind: Part
    low: float
    upper: Part | None
    high: float
    colour: tuple[float, float, float]
    upper_colour: tuple[float, float, float]
    bump: float = 0.0  # crown unevenness for vegetation (m)


@dataclass(frozen=True)
class SceneObject:
    """An object standing on the ground at lateral ``x`` and ``depth`` (m); ``dims`` are kind-specific."""

    kind: str  # car, truck, person, pole, static, anomaly
    x: float
    depth: float
    dims: tuple[float, ...]
    colour: tuple[float, float, float]
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SceneSpec:
    """All random choices of one image; :func:`render` is deterministic given a spec."""

    size: tuple[int, int]
    horizon: float  # row of the horizon (px)
    vanish_x: float  # column of the vanishing point (px)
    focal: float  # px
    cam_height: float  # m
    road_centre: float  # lateral offset of the road centre (m)
    road_half: float  # m
    sidewalk: tuple[float, float]  # widths left, right (m)
    terrain: tuple[float, float]  # grass strip widths left, right (m), 0 = none
    dashed_centre: bool
    zebra_depth: float | None
    facades: tuple[Facade, ...]
    backdrop: tuple[tuple[float, float, float, int], ...]  # (x0, x1 as width fractions, height px frac, part)
    objects: tuple[SceneObject, ...]
    colours: dict  # Part -> base RGB of stuff classes
    weather: str  # sunny, overcast, dusk
    shadow: tuple[float, float] | None  # building shadow on the ground: lateral offset, slope per metre depth
    gain: float
    cast: tuple[float, float, float]
    gamma: float
    light_grad: float
    blur: float  # Gaussian sigma (px)
    noise_std: float
    hood: float  # ego-vehicle hood height as a fraction of H (0 = none)
    border: int  # out-of-roi border width (px)
    texture_seed: int


_BASE = {  # mean colour and per-image spread of stuff classes; look-alike pairs are deliberately close
    _P.ROAD: ((0.36, 0.35, 0.38), 0.05),
    _P.ROAD_LINE: ((0.80, 0.80, 0.76), 0.06),
    _P.SIDEWALK: ((0.47, 0.44, 0.46), 0.06),
    _P.TERRAIN: ((0.40, 0.45, 0.27), 0.05),
    _P.VEGETATION: ((0.26, 0.36, 0.17), 0.05),
    _P.SKY: ((0.55, 0.70, 0.90), 0.05),
    _P.WALL: ((0.56, 0.54, 0.49), 0.06),
    _P.FENCE: ((0.50, 0.46, 0.40), 0.06),
    _P.POLE: ((0.42, 0.42, 0.44), 0.05),
    _P.EGO: ((0.10, 0.10, 0.12), 0.03),
    _P.BORDER: ((0.0, 0.0, 0.0), 0.0),
}
_BUILDING_COLOURS = ((0.55, 0.50, 0.45), (0.66, 0.62, 0.56), (0.45, 0.43, 0.42), (0.62, 0.45, 0.36),
                     (0.72, 0.70, 0.64), (0.50, 0.52, 0.55))
_CAR_COLOURS = ((0.85, 0.85, 0.86), (0.08, 0.08, 0.09), (0.60, 0.61, 0.63), (0.55, 0.08, 0.07),
                (0.10, 0.18, 0.45), (0.30, 0.32, 0.34), (0.70, 0.68, 0.60), (0.15, 0.30, 0.20))
_CLOTHES = ((0.10, 0.10, 0.12), (0.20, 0.22, 0.35), (0.45, 0.12, 0.12), (0.55, 0.50, 0.40),
            (0.80, 0.80, 0.78), (0.25, 0.35, 0.25), (0.35, 0.25, 0.20))
_SIGN_COLOURS = ((0.75, 0.10, 0.10), (0.10, 0.25, 0.65), (0.85, 0.75, 0.10), (0.85, 0.85, 0.85))


def _jitter(rng: np.random.Generator, rgb, spread: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(rgb) * rng.uniform(0.85, 1.15) + rng.normal(0, spread, 3), 0.02, 0.98)
    return tuple(float(v) for v in c)


def _facades(rng: np.random.Generator, side: int, d_max: float) -> list[Facade]:
    out, d = [], float(rng.uniform(0.5, 3.0))
    style = rng.choice(["city", "green", "mixed"], p=[0.5, 0.2, 0.3])
    while d < d_max:
        length = float(rng.uniform(6, 28))
        r = rng.random()
        veg, bld = _jitter(rng, _BASE[_P.VEGETATION][0], 0.04), _jitter(rng, _BUILDING_COLOURS[
            rng.integers(len(_BUILDING_COLOURS))], 0.04)
        if (style == "city" and r < 0.75) or (style == "mixed" and r < 0.45) or (style == "green" and r < 0.2):
            kind, low, upper, high, c1, c2, bump = _P.BUILDING, float(rng.uniform(7, 26)), None, 0.0, bld, bld, 0.0
        elif r < 0.85 or style == "green":
            kind, low, upper, high, c1, c2, bump = (_P.VEGETATION, float(rng.uniform(4, 12)), None, 0.0,
                                                    veg, veg, float(rng.uniform(0.5, 2.5)))
        elif r < 0.93:
            kind, low = _P.WALL, float(rng.uniform(1.0, 2.5))
            upper, high = (_P.BUILDING, low + float(rng.uniform(4, 18))) if rng.random() < 0.5 else (None, 0.0)
            c1, c2, bump = _jitter(rng, _BASE[_P.WALL][0], 0.05), bld, 0.0
        else:
            kind, low, upper, high = _P.FENCE, float(rng.uniform(1.0, 2.0)), _P.VEGETATION, 0.0
            high = low + float(rng.uniform(2, 8))
            c1, c2, bump = _jitter(rng, _BASE[_P.FENCE][0], 0.05), veg, float(rng.uniform(0.5, 2))
        out.append(Facade(side, d, d + length, kind, low, upper, high, c1, c2, bump))
        d += length + (float(rng.uniform(1, 8)) if rng.random() < 0.25 else 0.0)
    return out


def _anomaly(rng: np.random.Generator, road: tuple[float, float]) -> SceneObject:
    on_road = rng.random() < 0.7
    x = float(rng.uniform(road[0] - 1, road[1] + 1)) if on_road else float(rng.uniform(-12, 12))
    radius = float(np.exp(rng.uniform(np.log(0.3), np.log(2.5))))
    hue = rng.uniform(0, 1, 2)
    return SceneObject("anomaly", x, float(rng.uniform(5, 35)), (radius,), (1.0, 0.0, 1.0), {
        "shape": str(rng.choice(["star", "blob", "polygon"])),
        "texture": str(rng.choice(["checker", "rainbow", "stripes"])),
        "lobes": int(rng.integers(3, 9)), "phase": float(rng.uniform(0, 2 * np.pi)),
        "amp": float(rng.uniform(0.15, 0.5)), "hue": tuple(float(h) for h in hue),
        "period": float(rng.uniform(0.15, 0.6)), "lift": float(rng.uniform(0, 0.6)),
    })


def sample_scene(rng: np.random.Generator, size: tuple[int, int], *, ego_hood: bool = True,
                 anomalies: bool = False) -> SceneSpec:
    """Draw the random parameters of one street scene.

    Args:
        rng: the image's random generator.
        size: ``(H, W)`` in pixels.
        ego_hood: draw the ego-vehicle hood and out-of-roi border (Cityscapes style).
        anomalies: add 1-3 anomalous objects (StreetHazards test split).

    Returns:
        A :class:`SceneSpec`.
    """
    h, w = int(size[0]), int(size[1])
    horizon = h * float(rng.uniform(0.36, 0.5))
    cam_height = float(rng.uniform(1.5, 2.6))
    focal = w * float(rng.uniform(0.45, 0.7))
    road_half = float(rng.uniform(3.0, 6.5))
    road_centre = float(rng.uniform(-2.5, 2.5))
    sidewalk = (float(rng.uniform(1.5, 4.5)), float(rng.uniform(1.5, 4.5)))
    terrain = tuple(float(rng.uniform(1, 5)) if rng.random() < 0.35 else 0.0 for _ in range(2))
    colours = {p: _jitter(rng, c, s) for p, (c, s) in _BASE.items()}
    weather = str(rng.choice(["sunny", "overcast", "dusk"], p=[0.45, 0.4, 0.15]))
    if weather == "overcast":
        colours[_P.SKY] = _jitter(rng, (0.78, 0.80, 0.83), 0.03)
    elif weather == "dusk":
        colours[_P.SKY] = _jitter(rng, (0.85, 0.62, 0.45), 0.05)
    d_max = float(rng.uniform(60, 150))
    facades = tuple(_facades(rng, -1, d_max) + _facades(rng, 1, d_max))
    backdrop, x0 = [], 0.0
    while x0 < 1.0:
        x1 = x0 + float(rng.uniform(0.03, 0.15))
        kind = int(rng.choice([_P.BUILDING, _P.VEGETATION, _P.VOID], p=[0.45, 0.4, 0.15]))  # VOID: far clutter
        backdrop.append((x0, x1, float(rng.uniform(0.0, 0.08)), kind))
        x0 = x1

    left_curb = road_centre - road_half
    right_curb = road_centre + road_half
    objects: list[SceneObject] = []

    def roadside(inner: float, outer: float | None = None) -> float:
        """Lateral position on a random side, ``inner``..``outer`` m beyond the kerb (default: sidewalk)."""
        side = int(rng.choice([-1, 1]))
        off = float(rng.uniform(inner, max(inner, sidewalk[side > 0] if outer is None else outer)))
        return left_curb - off if side < 0 else right_curb + off

    for _ in range(int(rng.integers(1, 8))):  # cars: in lanes or parked at the curb
        parked = rng.random() < 0.5
        side = rng.choice([-1, 1])
        if parked:
            x = (left_curb + 1.1) if side < 0 else (right_curb - 1.1)
        else:
            x = float(rng.uniform(left_curb + 1.2, right_curb - 1.2))
        truck = rng.random() < 0.12
        dims = ((2.5, float(rng.uniform(2.8, 3.6)), float(rng.uniform(6, 10))) if truck
                else (float(rng.uniform(1.7, 2.0)), float(rng.uniform(1.35, 1.65)), float(rng.uniform(3.8, 4.8))))
        colour = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 0.03)
        objects.append(SceneObject("truck" if truck else "car", float(x), float(rng.uniform(5, 60)), dims, colour))
    for _ in range(int(rng.integers(0, 9))):  # pedestrians, mostly on sidewalks
        x = roadside(0.3) if rng.random() < 0.8 else rng.uniform(left_curb, right_curb)
        dims = (float(rng.uniform(1.5, 1.9)), float(rng.uniform(0.4, 0.55)))
        objects.append(SceneObject(
            "person", float(x), float(rng.uniform(4, 45)), dims,
            _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 0.04),
            {"legs": _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 0.03),
             "skin": _jitter(rng, (0.75, 0.58, 0.45), 0.08), "stride": float(rng.uniform(0, 0.35))}))
    for _ in range(int(rng.integers(2, 10))):  # poles with signs or traffic lights, near the curb
        x = roadside(0.3, 0.8)
        top = str(rng.choice(["none", "sign", "light"], p=[0.3, 0.45, 0.25]))
        objects.append(SceneObject(
            "pole", x, float(rng.uniform(4, 70)), (float(rng.uniform(3.5, 7.5)), float(rng.uniform(0.08, 0.2))),
            colours[_P.POLE],
            {"top": top, "shape": str(rng.choice(["circle", "triangle", "rect"])),
             "sign_colour": _jitter(rng, _SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))], 0.05),
             "sign_size": float(rng.uniform(0.5, 0.9)), "lamp": int(rng.integers(3))}))
    for _ in range(int(rng.integers(0, 4))):  # static clutter: bins, boxes, bollards
        objects.append(SceneObject("static", roadside(0.3), float(rng.uniform(4, 40)),
                                   (float(rng.uniform(0.4, 1.2)), float(rng.uniform(0.5, 1.2))),
                                   _jitter(rng, (0.30, 0.34, 0.30), 0.08)))
    if anomalies:
        objects += [_anomaly(rng, (left_curb, right_curb)) for _ in range(int(rng.integers(1, 4)))]
    objects.sort(key=lambda o: -o.depth)  # far first: near objects occlude

    sunny = weather == "sunny"
    return SceneSpec(
        size=(h, w), horizon=horizon, vanish_x=w * float(rng.uniform(0.38, 0.62)), focal=focal,
        cam_height=cam_height, road_centre=road_centre, road_half=road_half, sidewalk=sidewalk,
        terrain=terrain, dashed_centre=bool(rng.random() < 0.7),
        zebra_depth=float(rng.uniform(8, 30)) if rng.random() < 0.25 else None,
        facades=facades, backdrop=tuple(backdrop), objects=tuple(objects), colours=colours,
        weather=weather,
        shadow=(float(rng.uniform(-8, 8)), float(rng.uniform(-0.4, 0.4))) if sunny and rng.random() < 0.6 else None,
        gain={"sunny": 1.1, "overcast": 0.9, "dusk": 0.6}[weather] * float(rng.uniform(0.8, 1.2)),
        cast=tuple(float(c) for c in rng.uniform(0.92, 1.08, 3)),
        gamma=float(rng.uniform(0.8, 1.25)), light_grad=float(rng.uniform(-0.35, 0.35)),
        blur=float(rng.uniform(0.3, 1.2)) * min(2.0, max(0.35, w / 512)), noise_std=float(rng.uniform(0.005, 0.03)),
        hood=float(rng.uniform(0.08, 0.16)) if ego_hood else 0.0,
        border=int(rng.integers(1, 4)) if ego_hood else 0,
        texture_seed=int(rng.integers(2**31)),
    )


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------

# per-part amplitude of fine (pixel) and coarse (blotchy) noise
_FINE = np.zeros(len(Part), np.float32)
_COARSE = np.zeros(len(Part), np.float32)
for _p, _f, _c in [(_P.ROAD, 0.05, 0.10), (_P.ROAD_LINE, 0.05, 0.12), (_P.SIDEWALK, 0.06, 0.07),
                   (_P.TERRAIN, 0.14, 0.22), (_P.VEGETATION, 0.22, 0.35), (_P.BUILDING, 0.04, 0.08),
                   (_P.WALL, 0.05, 0.12), (_P.FENCE, 0.05, 0.06), (_P.POLE, 0.03, 0.03),
                   (_P.TRAFFIC_SIGN, 0.03, 0.02), (_P.TRAFFIC_LIGHT, 0.03, 0.02), (_P.PERSON, 0.05, 0.05),
                   (_P.CAR, 0.03, 0.04), (_P.TRUCK, 0.04, 0.06), (_P.STATIC, 0.06, 0.08), (_P.SKY, 0.01, 0.0),
                   (_P.EGO, 0.02, 0.02), (_P.ANOMALY, 0.03, 0.0), (_P.VOID, 0.08, 0.10)]:
    _FINE[_p], _COARSE[_p] = _f, _c
_GROUND = np.zeros(len(Part), bool)
_GROUND[[_P.ROAD, _P.ROAD_LINE, _P.SIDEWALK, _P.TERRAIN]] = True


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth value noise ``(H, W)`` float32, unit-ish variance, feature size ``cell`` px."""
    from PIL import Image

    h, w = shape
    g = rng.standard_normal((max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((w, h), Image.BILINEAR))


class _Canvas:
    """Label, instance-colour and pattern maps painted back to front."""

    def __init__(self, spec: SceneSpec):
        self.h, self.w = spec.size
        self.part = np.full((self.h, self.w), Part.SKY, np.uint8)
        self.inst = np.zeros((self.h, self.w), np.int32)
        self.colours = [spec.colours[_P.SKY]]
        self.detail = np.zeros((self.h, self.w), np.float32)  # multiplicative pattern offset
        self.shade = np.ones((self.h, self.w), np.float32)  # shadows on the ground
        self.override: np.ndarray | None = None  # per-pixel RGB (anomaly textures)
        self.override_mask: np.ndarray | None = None

    def new(self, colour) -> int:
        self.colours.append(tuple(colour))
        return len(self.colours) - 1

    def paint(self, mask: np.ndarray, part: Part, colour, box=(slice(None), slice(None))) -> None:
        i = self.new(colour)
        self.part[box][mask] = part
        self.inst[box][mask] = i
        self.detail[box][mask] = 0.0
        if self.override_mask is not None:
            self.override_mask[box][mask] = False

    def box(self, x0: float, y0: float, x1: float, y1: float):
        """Clipped integer box (slices) and pixel-centre grids; None if empty. Keeps >= 1 px width."""
        if x1 - x0 < 1:
            c = 0.5 * (x0 + x1)
            x0, x1 = c - 0.5, c + 0.5
        if y1 - y0 < 1:
            c = 0.5 * (y0 + y1)
            y0, y1 = c - 0.5, c + 0.5
        c0, c1 = max(0, int(np.floor(x0))), min(self.w, int(np.ceil(x1)))
        r0, r1 = max(0, int(np.floor(y0))), min(self.h, int(np.ceil(y1)))
        if c0 >= c1 or r0 >= r1:
            return None
        ys = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        xs = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
        return (slice(r0, r1), slice(c0, c1)), ys, xs

    def rect(self, x0, y0, x1, y1, part, colour) -> None:
        b = self.box(x0, y0, x1, y1)
        if b is not None:
            sl, ys, xs = b
            self.paint(np.ones((ys.size, xs.size), bool), part, colour, sl)

    def ellipse(self, cx, cy, rx, ry, part, colour) -> None:
        b = self.box(cx - rx, cy - ry, cx + rx, cy + ry)
        if b is not None:
            sl, ys, xs = b
            m = ((xs - cx) / max(rx, 0.5)) ** 2 + ((ys - cy) / max(ry, 0.5)) ** 2 <= 1
            self.paint(m, part, colour, sl)

    def polygon(self, pts, part, colour) -> None:
        """Convex polygon, vertices ``[(x, y), ...]`` in either orientation."""
        pts = np.asarray(pts, np.float32)
        b = self.box(*pts.min(0), *pts.max(0))
        if b is None:
            return
        sl, ys, xs = b
        nxt = np.roll(pts, -1, 0)
        orient = np.sign(np.sum(pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1])) or 1.0
        m = np.ones((ys.size, xs.size), bool)
        for (ax, ay), (bx, by) in zip(pts, nxt, strict=True):
            m &= orient * ((bx - ax) * (ys - ay) - (by - ay) * (xs - ax)) >= -0.5
        self.paint(m, part, colour, sl)


def _project(spec: SceneSpec, x: float, z: float, d: float) -> tuple[float, float]:
    """World point (lateral x, height z, depth d in m) -> image (column, row)."""
    return spec.vanish_x + spec.focal * x / d, spec.horizon + spec.focal * (spec.cam_height - z) / d


def _draw_ground(c: _Canvas, spec: SceneSpec, ys: np.ndarray, xs: np.ndarray) -> None:
    h = c.h
    below = ys[:, 0] > spec.horizon + 0.5
    gy = ys[below]  # (n, 1)
    depth = spec.focal * spec.cam_height / (gy - spec.horizon)  # (n, 1)
    lat = (xs - spec.vanish_x) * depth / spec.focal - spec.road_centre  # (n, W)
    rh = spec.road_half
    sl, sr = spec.sidewalk
    tl, tr = spec.terrain
    zone = np.full(lat.shape, Part.TERRAIN, np.uint8)
    zone[(lat >= -rh - sl - tl) & (lat < rh + sr + tr)] = Part.TERRAIN
    zone[(lat >= -rh - sl) & (lat < rh + sr)] = Part.SIDEWALK
    zone[np.abs(lat) < rh] = Part.ROAD
    line = np.abs(np.abs(lat) - (rh - 0.35)) < 0.08  # solid edge lines
    centre = np.abs(lat) < 0.07
    if spec.dashed_centre:
        centre &= np.mod(depth, 9.0) < 3.0
    line |= centre
    if spec.zebra_depth is not None:
        line |= (np.abs(depth - spec.zebra_depth - 2) < 2) & (np.mod(lat, 1.0) < 0.5) & (np.abs(lat) < rh - 0.5)
    zone[line & (zone == Part.ROAD)] = Part.ROAD_LINE
    rows = np.nonzero(below)[0]
    r0 = int(rows[0]) if rows.size else h
    region = (slice(r0, h), slice(None))
    for p in (Part.ROAD, Part.ROAD_LINE):
        c.paint(zone == p, p, spec.colours[p], region)
    for p in (Part.SIDEWALK, Part.TERRAIN):  # one instance per side of the road
        c.paint((zone == p) & (lat < 0), p, spec.colours[p], region)
        c.paint((zone == p) & (lat >= 0), p, spec.colours[p], region)
    # paving tiles and kerb on the sidewalk, tyre wear on the road
    side = zone == Part.SIDEWALK
    tiles = (np.mod(lat, 0.6) < 0.05) | (np.mod(depth, 0.6) < 0.05 * depth / 6)
    kerb = np.abs(np.abs(lat) - rh) < 0.2
    c.detail[region] += np.where(side & tiles, -0.12, 0) + np.where(side & kerb, 0.15, 0)
    wear = np.exp(-((np.abs(lat) - rh / 2) ** 2) / 0.3)
    c.detail[region] += np.where(zone == Part.ROAD, -0.08 * wear, 0)
    if spec.shadow is not None:
        off, slope = spec.shadow
        shadowed = lat + spec.road_centre < off + slope * depth
        c.shade[region] *= np.where(shadowed, 0.55, 1.0).astype(np.float32)


def _draw_backdrop(c: _Canvas, spec: SceneSpec, ys: np.ndarray, xs: np.ndarray) -> None:
    for x0, x1, hfrac, part in spec.backdrop:
        colour = {Part.VEGETATION: spec.colours[_P.VEGETATION], Part.VOID: (0.45, 0.42, 0.40)}.get(part,
                                                                                              (0.50, 0.50, 0.52))
        top = spec.horizon - hfrac * c.h
        c.rect(x0 * c.w, top, x1 * c.w, spec.horizon + 1, Part(part), colour)


def _draw_facades(c: _Canvas, spec: SceneSpec, ys: np.ndarray, xs: np.ndarray) -> None:
    f, hc = spec.focal, spec.cam_height
    rh = spec.road_half
    offs = {-1: spec.road_centre - rh - spec.sidewalk[0] - spec.terrain[0],
            1: spec.road_centre + rh + spec.sidewalk[1] + spec.terrain[1]}
    dx = xs[0] - spec.vanish_x  # (W,)
    with np.errstate(divide="ignore", invalid="ignore"):
        col_depth = {s: np.where(np.sign(dx) == s, f * offs[s] / dx, np.inf) for s in (-1, 1)}
    for fa in spec.facades:
        cd = col_depth[fa.side]
        cols = np.nonzero((cd >= fa.d0) & (cd < fa.d1))[0]
        if cols.size == 0:
            continue
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        d = cd[c0:c1][None, :]  # (1, n)
        z = hc - (ys - spec.horizon) * d / f  # (H, n) height of the facade point seen by each pixel
        bump = fa.bump * np.sin(d * 1.1 + fa.d0) * np.cos(d * 0.37) if fa.bump else 0.0
        region = (slice(None), slice(c0, c1))
        top_low = fa.low + (bump if fa.upper is None else 0.0)
        lower = (z >= 0) & (z < top_low)
        c.paint(lower, fa.kind, fa.colour, region)
        if fa.upper is not None:
            upper = (z >= fa.low) & (z < fa.high + bump)
            c.paint(upper, fa.upper, fa.upper_colour, region)
        if fa.kind == Part.BUILDING or fa.upper == Part.BUILDING:
            base = fa.low if fa.upper == Part.BUILDING else 0.0
            top = fa.high if fa.upper == Part.BUILDING else fa.low
            win = ((np.mod(d - fa.d0, 3.2) > 0.8) & (np.mod(z - base, 3.0) > 1.1) & (z > base + 1.0)
                   & (z < top - 0.8))
            c.detail[region] += np.where(win, -0.45, 0.0).astype(np.float32)
        if fa.kind == Part.FENCE:
            slats = np.mod(d, 0.25) < 0.08
            c.detail[region] += np.where(lower & slats, -0.3, 0.0).astype(np.float32)


def _draw_car(c: _Canvas, spec: SceneSpec, o: SceneObject, part: Part) -> None:
    width, height, length = o.dims
    d = o.depth
    xl, xr = o.x - width / 2, o.x + width / 2
    body = 0.55 * height if part == Part.CAR else 0.9 * height
    dark = tuple(0.35 * v + 0.05 for v in o.colour)
    # ground shadow
    (sx0, sy), (sx1, _) = _project(spec, xl - 0.2, 0, d), _project(spec, xr + 0.2, 0, d)
    _, sy_far = _project(spec, 0, 0, d + length)
    b = c.box(sx0, sy_far, sx1, sy + 0.1 * (sy - spec.horizon))
    if b is not None:
        sl, ys, xs = b
        c.shade[sl] *= np.where(ys > sy_far, 0.45, 1.0).astype(np.float32)
    # side face towards the camera axis, then the rear face in front of it
    xs_side = xl if o.x > width / 2 else (xr if o.x < -width / 2 else None)
    if xs_side is not None:
        c.polygon([_project(spec, xs_side, z, dd) for z, dd in ((0.25, d), (body, d), (body, d + length),
                                                                 (0.25, d + length))],
                  part, tuple(0.8 * v for v in o.colour))
        if part == Part.CAR:  # cabin and side windows
            cabin = ((body, 0.15), (height, 0.35), (height, 0.8), (body, 0.92))
            c.polygon([_project(spec, xs_side, z, d + t * length) for z, t in cabin], part,
                      tuple(0.8 * v for v in o.colour))
            glass = ((body + 0.05, 0.2), (height - 0.06, 0.37), (height - 0.06, 0.78), (body + 0.05, 0.87))
            c.polygon([_project(spec, xs_side, z, d + t * length) for z, t in glass], part, (0.12, 0.14, 0.17))
        for dd in (d + 0.8, d + length - 0.8):
            wx, wy = _project(spec, xs_side, 0.33, dd)
            r = 0.33 * spec.focal / dd
            c.ellipse(wx, wy, 0.33 * spec.focal * abs(xs_side) / dd**2, r, part, (0.05, 0.05, 0.05))
    # rear: wheels, body, cabin with window, lights
    for wx in (xl + 0.15, xr - 0.45):
        x0, y0 = _project(spec, wx, 0.45, d)
        x1, y1 = _project(spec, wx + 0.3, 0, d)
        c.rect(x0, y0, x1, y1, part, (0.04, 0.04, 0.04))
    x0, y0 = _project(spec, xl, body, d)
    x1, y1 = _project(spec, xr, 0.25, d)
    c.rect(x0, y0, x1, y1, part, o.colour)
    if part == Part.CAR:
        inset = 0.18 * width
        pts = [_project(spec, xl + 0.05, body, d), _project(spec, xr - 0.05, body, d),
               _project(spec, xr - inset, height, d), _project(spec, xl + inset, height, d)]
        c.polygon(pts, part, o.colour)
        pts = [_project(spec, xl + 0.15, body + 0.05, d), _project(spec, xr - 0.15, body + 0.05, d),
               _project(spec, xr - inset - 0.05, height - 0.06, d), _project(spec, xl + inset + 0.05, height - 0.06, d)]
        c.polygon(pts, part, (0.12, 0.14, 0.17))
    else:
        x0, y0 = _project(spec, xl, height, d)
        x1, y1 = _project(spec, xr, body, d)
        c.rect(x0, y0, x1, y1, part, dark)
    for lx in (xl + 0.05, xr - 0.3):
        x0, y0 = _project(spec, lx, body - 0.05, d)
        x1, y1 = _project(spec, lx + 0.25, body - 0.2, d)
        c.rect(x0, y0, x1, y1, part, (0.7, 0.08, 0.05))


def _draw_person(c: _Canvas, spec: SceneSpec, o: SceneObject) -> None:
    height, width = o.dims
    d, x = o.depth, o.x
    stride = o.extra["stride"]
    for lx in (x - 0.12 - stride / 2, x + 0.02 + stride / 2):  # legs
        x0, y0 = _project(spec, lx, 0.48 * height, d)
        x1, y1 = _project(spec, lx + 0.12, 0, d)
        c.rect(x0, y0, x1, y1, Part.PERSON, o.extra["legs"])
    x0, y0 = _project(spec, x - width / 2, 0.82 * height, d)
    x1, y1 = _project(spec, x + width / 2, 0.46 * height, d)
    c.rect(x0, y0, x1, y1, Part.PERSON, o.colour)
    for ax in (x - width / 2 - 0.08, x + width / 2):  # arms
        x0, y0 = _project(spec, ax, 0.8 * height, d)
        x1, y1 = _project(spec, ax + 0.08, 0.5 * height, d)
        c.rect(x0, y0, x1, y1, Part.PERSON, o.colour)
    hx, hy = _project(spec, x, 0.92 * height, d)
    r = 0.1 * height * spec.focal / d
    c.ellipse(hx, hy, 0.8 * r, r, Part.PERSON, o.extra["skin"])


def _draw_pole(c: _Canvas, spec: SceneSpec, o: SceneObject) -> None:
    height, width = o.dims
    d, x = o.depth, o.x
    x0, y0 = _project(spec, x - width / 2, height, d)
    x1, y1 = _project(spec, x + width / 2, 0, d)
    c.rect(x0, y0, x1, y1, Part.POLE, o.colour)
    top, s = o.extra["top"], o.extra["sign_size"]
    cx, cy = _project(spec, x, height - s / 2, d)
    r = s / 2 * spec.focal / d
    if top == "sign":
        col = o.extra["sign_colour"]
        if o.extra["shape"] == "circle":
            c.ellipse(cx, cy, r, r, Part.TRAFFIC_SIGN, col)
            c.ellipse(cx, cy, 0.7 * r, 0.7 * r, Part.TRAFFIC_SIGN, (0.9, 0.9, 0.9))
        elif o.extra["shape"] == "triangle":
            c.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], Part.TRAFFIC_SIGN, col)
        else:
            c.rect(cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r, Part.TRAFFIC_SIGN, col)
    elif top == "light":
        c.rect(cx - 0.4 * r, cy - 1.2 * r, cx + 0.4 * r, cy + 1.2 * r, Part.TRAFFIC_LIGHT, (0.12, 0.12, 0.10))
        lamp = [(0.9, 0.15, 0.1), (0.95, 0.7, 0.1), (0.2, 0.9, 0.3)][o.extra["lamp"]]
        c.ellipse(cx, cy + (o.extra["lamp"] - 1) * 0.75 * r, 0.28 * r, 0.28 * r, Part.TRAFFIC_LIGHT, lamp)


def _hsv_to_rgb(h: np.ndarray) -> np.ndarray:
    """Fully saturated colours for hue ``h`` in [0, 1): ``(..., 3)``."""
    k = np.mod(np.stack([5 + h * 6, 3 + h * 6, 1 + h * 6], -1), 6)
    return 1 - np.clip(np.minimum(k, 4 - k), 0, 1)


def _draw_anomaly(c: _Canvas, spec: SceneSpec, o: SceneObject) -> None:
    radius, e = o.dims[0], o.extra
    cx, cy = _project(spec, o.x, radius * (1 + e["lift"]), o.depth)
    r = radius * spec.focal / o.depth
    b = c.box(cx - 1.6 * r, cy - 1.6 * r, cx + 1.6 * r, cy + 1.6 * r)
    if b is None:
        return
    sl, ys, xs = b
    ang = np.arctan2(ys - cy, xs - cx)
    dist = np.hypot(xs - cx, ys - cy)
    k, ph, a = e["lobes"], e["phase"], e["amp"]
    if e["shape"] == "star":
        rr = r * (1 - a + a * np.abs(np.cos(k * (ang + ph) / 2)) ** 3 * 2)
    elif e["shape"] == "blob":
        rr = r * (1 + a * np.sin(k * ang + ph) * 0.6 + 0.3 * a * np.cos((k + 2) * ang - ph))
    else:  # regular polygon
        sector = np.mod(ang + ph, 2 * np.pi / k) - np.pi / k
        rr = r * np.cos(np.pi / k) / np.cos(sector)
    mask = dist <= rr
    c.paint(mask, Part.ANOMALY, (1.0, 1.0, 1.0), sl)
    u, v = (xs - cx) / max(r, 1.0), (ys - cy) / max(r, 1.0)
    p = e["period"]
    if e["texture"] == "checker":
        sel = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
        rgb = np.where(sel[..., None], _hsv_to_rgb(np.array(e["hue"][0])), _hsv_to_rgb(np.array(e["hue"][1])) * 0.3)
    elif e["texture"] == "rainbow":
        rgb = _hsv_to_rgb(np.mod(ang / (2 * np.pi) + dist / max(r, 1.0) * e["hue"][1] + e["hue"][0], 1.0))
    else:
        sel = np.mod(u + 0.5 * v, p) < p / 2
        rgb = np.where(sel[..., None], _hsv_to_rgb(np.array(e["hue"][0])), np.float32(0.95))
    rgb = np.broadcast_to(rgb, mask.shape + (3,))
    if c.override is None:
        c.override = np.zeros((c.h, c.w, 3), np.float32)
        c.override_mask = np.zeros((c.h, c.w), bool)
    c.override[sl][mask] = rgb[mask]
    c.override_mask[sl][mask] = True


def render(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene.

    Args:
        spec: from :func:`sample_scene`.

    Returns:
        ``(image, parts)``: uint8 RGB ``(H, W, 3)`` and uint8 :class:`Part` map ``(H, W)``.
    """
    from scipy.ndimage import gaussian_filter

    h, w = spec.size
    rng = np.random.default_rng(spec.texture_seed)
    c = _Canvas(spec)
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5
    _draw_backdrop(c, spec, ys, xs)
    _draw_ground(c, spec, ys, xs)
    _draw_facades(c, spec, ys, xs)
    for o in spec.objects:
        if o.kind in ("car", "truck"):
            _draw_car(c, spec, o, Part.CAR if o.kind == "car" else Part.TRUCK)
        elif o.kind == "person":
            _draw_person(c, spec, o)
        elif o.kind == "pole":
            _draw_pole(c, spec, o)
        elif o.kind == "static":
            x0, y0 = _project(spec, o.x - o.dims[0] / 2, o.dims[1], o.depth)
            x1, y1 = _project(spec, o.x + o.dims[0] / 2, 0, o.depth)
            c.rect(x0, y0, x1, y1, Part.STATIC, o.colour)
        elif o.kind == "anomaly":
            _draw_anomaly(c, spec, o)
    if spec.hood > 0:  # ego-vehicle hood: a dark bulge rising towards the image centre
        top = h * (1 - spec.hood) + spec.hood * h * 0.6 * ((xs - w / 2) / (w / 2)) ** 2
        c.paint(np.broadcast_to(ys >= top, (h, w)), Part.EGO, spec.colours[_P.EGO])
    if spec.border > 0:
        m = np.zeros((h, w), bool)
        b = spec.border
        m[:b], m[-b:], m[:, :b], m[:, -b:] = True, True, True, True
        c.paint(m, Part.BORDER, (0.0, 0.0, 0.0))

    # --- appearance: instance colour x texture x shading x illumination
    fine = rng.standard_normal((h, w), dtype=np.float32)
    coarse = _noise(rng, (h, w), max(2.0, h / 20))
    blobs = _noise(rng, (h, w), max(3.0, h / 6))
    part = c.part
    img = np.asarray(c.colours, np.float32)[c.inst]
    mult = 1 + _FINE[part] * fine + _COARSE[part] * coarse + c.detail
    sky = part == Part.SKY
    grad = np.clip(ys / max(spec.horizon, 1.0), 0, 1)  # sky gets lighter towards the horizon
    mult = np.where(sky, 0.8 + 0.35 * grad, mult)
    img *= mult[..., None]
    if spec.weather != "dusk":
        cloud = np.clip(blobs - 0.3, 0, 1)[..., None] * (0.6 if spec.weather == "sunny" else 0.3)
        img = np.where(sky[..., None], img * (1 - cloud) + cloud * 0.95, img)
    if c.override is not None:
        img = np.where(c.override_mask[..., None], c.override * (1 + 0.05 * fine[..., None]), img)
    shade = np.where(_GROUND[part], c.shade, 1.0)
    if spec.weather == "sunny":  # dappled shadows of trees on the ground
        shade = shade * np.where(_GROUND[part] & (blobs > 0.9), 0.7, 1.0)
    r2 = ((xs / w - 0.5) ** 2 + (ys / h - 0.5) ** 2)
    shade = shade * (1 + spec.light_grad * (xs / w - 0.5)) * (1 - 0.35 * r2)
    img *= (shade * spec.gain)[..., None] * np.asarray(spec.cast, np.float32)
    img = np.clip(img, 0, 1) ** spec.gamma
    img = gaussian_filter(img, sigma=(spec.blur, spec.blur, 0), mode="nearest", truncate=3.0)
    img += spec.noise_std * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), part


# ----------------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------------

CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster"),
          "test": ("berlin", "bielefeld")}
TOWNS = {"train": "t1-3", "val": "t4", "test": "t5"}


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])


def make_scene_dataset(out: str | Path, style: str = "cityscapes", num_images: int = 16,
                       size: tuple[int, int] = (128, 256), seed: int = 0,
                       splits: tuple[str, ...] | None = None, write_color: bool = True) -> Path:
    """Write a street-scene phantom in the real Cityscapes or StreetHazards layout.

    Cityscapes: ``leftImg8bit/{split}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png`` and
    ``gtFine/{split}/{city}/..._gtFine_labelIds.png`` (+ ``_gtFine_color.png``), splits train/val.
    StreetHazards: ``train/{images,annotations}/training/t1-3/{n}.png``, ``.../validation/t4/`` and
    ``test/{images,annotations}/test/t5/`` (annotation = class + 1; anomalies only in test).

    Args:
        out: output folder (created).
        style: ``"cityscapes"`` or ``"streethazards"``.
        num_images: images per split.
        size: ``(H, W)`` in pixels.
        seed: random seed; equal seeds give byte-identical files.
        splits: default ``("train", "val")`` for Cityscapes, ``("train", "val", "test")`` for StreetHazards.
        write_color: also write Cityscapes ``_gtFine_color.png`` visualisations.

    Returns:
        The dataset root ``out``.
    """
    if style not in ("cityscapes", "streethazards"):
        raise ValueError(f"style must be 'cityscapes' or 'streethazards', got {style!r}")
    root = Path(out)
    cs = style == "cityscapes"
    splits = splits or (("train", "val") if cs else ("train", "val", "test"))
    for split in splits:
        if split not in CITIES:
            raise ValueError(f"unknown split {split!r}; use train, val or test")
        for i in range(num_images):
            rng = _image_rng(seed, split, i)
            spec = sample_scene(rng, size, ego_hood=cs, anomalies=(not cs and split == "test"))
            image, parts = render(spec)
            if cs:
                cities = CITIES[split]
                city = cities[i % len(cities)]
                stem = f"{city}_{i // len(cities):06d}_{19:06d}"
                ids = to_cityscapes(parts)
                write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
                write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
                if write_color:
                    write_png(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", _CS_COLOR[ids])
            else:
                archive, sub = SPLIT_FOLDERS[split]
                name = f"{i + 1}.png"
                write_png(root / archive / "images" / sub / TOWNS[split] / name, image)
                write_png(root / archive / "annotations" / sub / TOWNS[split] / name, to_streethazards(parts))
    return root
