"""Software renderer for CLEVR-style scenes, in numpy and PIL.

A pinhole camera looks down at a ground plane. Cubes, spheres and cylinders are projected exactly
(corners and rim points), then shaded per pixel: Lambert shading for rubber (matte); for metal, a
reflection of a bright sky and a darker ground, Blinn-Phong highlights from a key and a fill light (a
streak on vertical surfaces) and a darker rim (Fresnel-like falloff). Flat faces get slightly bent
normals so that a metal face shows a highlight and a gradient instead of one flat colour. Each object
casts a soft elliptical shadow on the ground. Objects are drawn back to front, and the image is drawn
at ``supersample`` times its size and box-filtered down for anti-aliasing.

World axes: x to the right, y away from the camera (behind), z up; units are CLEVR's (the ground used
for placement spans about [-3, 3] on x and y, a large object has radius 0.7).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["Camera", "Look", "DISPLAY_LOOK", "LOOKS", "SceneObject", "ObjectGeometry", "project_object",
           "render_scene", "srgb_to_linear", "linear_to_srgb"]

_LIGHT = np.array([-0.55, -0.75, 1.5]) / np.linalg.norm([-0.55, -0.75, 1.5])  # unit vector towards the key light
_FILL = np.array([0.9, -0.8, 0.7]) / np.linalg.norm([0.9, -0.8, 0.7])  # unit vector towards a weaker fill light


@dataclass(frozen=True)
class Look:
    """How colours are formed: the palette's meaning, the light's strength and the ground.

    ``"linear"`` is CLEVR's pipeline: its Blender scenes use the palette's RGB (``properties.json``) as
    linear reflectance, light it, and write sRGB-encoded PNGs, so a red (173, 35, 35) shows as a pale,
    muted red. ``exposure`` scales the diffuse light so that a matte object's centre has the brightness
    measured on real renders (``scripts/clevr_render_stats.py``), and the ground colours are those measured
    there. ``"display"`` (the generator's first version) shades the palette's values as display colours,
    which gives far more saturated objects than CLEVR's.
    """

    color_space: str = "linear"
    exposure: float = 0.32
    ground_top: tuple[float, float, float] = (0.41, 0.41, 0.41)  # display colour of the far ground
    ground_bottom: tuple[float, float, float] = (0.57, 0.56, 0.55)  # and of the near ground

    def __post_init__(self) -> None:
        if self.color_space not in LOOKS:
            raise ValueError(f"color_space must be one of {sorted(LOOKS)}, got {self.color_space!r}")

    def to_working(self, display: np.ndarray) -> np.ndarray:
        """Display colours -> the space shading happens in."""
        return srgb_to_linear(display) if self.color_space == "linear" else display

    def to_display(self, working: np.ndarray) -> np.ndarray:
        return linear_to_srgb(working) if self.color_space == "linear" else working


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function, inverted (IEC 61966-2-1), on values in [0, 1]."""
    c = np.clip(np.asarray(c, dtype=np.float32), 0, 1)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (IEC 61966-2-1) on values in [0, 1]."""
    c = np.clip(np.asarray(c, dtype=np.float32), 0, 1)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


LOOKS = ("linear", "display")
DISPLAY_LOOK = Look("display", exposure=1.0, ground_top=(0.49, 0.49, 0.50), ground_bottom=(0.62, 0.62, 0.63))


class Camera:
    """A pinhole camera above the ground, looking at it from the front (towards +y).

    Args:
        image_size: width of the image in pixels (and its height, unless ``height`` is given).
        elevation_deg: how far the view direction points down from the horizontal.
        distance: distance from the camera to its look-at point on the ground.
        focal_224: focal length in pixels for a 224-pixel-wide image; scaled with the width.
        target_y: y of the look-at point, so that the scene sits in the middle of the frame.
        height: image height in pixels (default: square).
    """

    def __init__(self, image_size: int, elevation_deg: float = 40.0, distance: float = 18.0,
                 focal_224: float = 516.0, target_y: float = 0.25, height: int | None = None):
        self.image_size = self.width = image_size
        self.height = height or image_size
        self.focal = focal_224 * image_size / 224.0
        e = math.radians(elevation_deg)
        self.forward = np.array([0.0, math.cos(e), -math.sin(e)])  # (3,)
        self.right = np.array([1.0, 0.0, 0.0])
        self.up = np.cross(self.right, self.forward)  # (3,), points up and away
        self.position = np.array([0.0, target_y, 0.0]) - distance * self.forward

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> (N, 3): pixel x, pixel y (down) and depth along the view axis."""
        d = np.asarray(points, dtype=np.float64).reshape(-1, 3) - self.position  # (N, 3)
        depth = d @ self.forward  # (N,)
        px = self.width / 2.0 + self.focal * (d @ self.right) / depth
        py = self.height / 2.0 - self.focal * (d @ self.up) / depth
        return np.stack([px, py, depth], axis=1)


@dataclass(frozen=True)
class SceneObject:
    """One object to draw, in world units."""

    shape: str  # "cube", "sphere" or "cylinder"
    rgb: tuple[int, int, int]  # base colour
    material: str  # "rubber" or "metal"
    radius: float  # CLEVR size radius (large 0.7, small 0.35); a cube's half side is radius / sqrt(2)
    x: float  # ground position
    y: float
    rotation: float = 0.0  # degrees about the vertical axis

    @property
    def half_extent(self) -> float:
        """Half side for a cube, radius otherwise (CLEVR scales cubes by 1/sqrt(2))."""
        return self.radius / math.sqrt(2.0) if self.shape == "cube" else self.radius

    @property
    def center(self) -> np.ndarray:
        """Centre of the object in 3D; it rests on the ground."""
        return np.array([self.x, self.y, self.half_extent])


@dataclass
class _Part:
    """A region of an object's silhouette with one shading rule."""

    polygon: np.ndarray  # (K, 2) pixel coordinates
    kind: str  # "flat", "sphere" or "side" (cylinder side)
    normal: np.ndarray | None = None  # (3,) world normal of a flat part


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; (N, 2) -> (K, 2) counter-clockwise."""
    pts = sorted(map(tuple, np.round(points, 4).tolist()))

    def half(seq: list) -> list:
        out: list = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


@functools.cache
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], axis=1)  # (n, 3)


def _circle(center: np.ndarray, radius: float, n: int = 28) -> np.ndarray:
    """(n, 3) points of a horizontal circle, in order around it."""
    return center + radius * _unit_circle(n)


_CUBE_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
# corner indices of each cube face in order around it: (axis, sign, [4 corners])
_CUBE_FACES = [
    (axis, sign, [next(k for k, c in enumerate(_CUBE_SIGNS) if c[axis] == sign and c[p] == u and c[q] == w)
                  for u, w in ((-1, -1), (-1, 1), (1, 1), (1, -1))])
    for axis, (p, q) in enumerate(((1, 2), (0, 2), (0, 1))) for sign in (-1, 1)
]


class ObjectGeometry:
    """An object projected into the image: its centre pixel, box, outline and shading parts.

    The box is computed at once (placement tries many positions); the outline and the parts are
    computed on first use.
    """

    def __init__(self, obj: SceneObject, cam: Camera):
        self.obj, self.cam = obj, cam
        cx, cy, depth = cam.project(obj.center)[0]
        self.pixel = (float(cx), float(cy), float(depth))  # projected centre: x, y (down), depth
        self.radius_px = cam.focal * obj.radius / depth  # the object radius in pixels at its depth
        if obj.shape == "sphere":
            self.points = np.array([cx, cy]) + self.radius_px * _unit_circle(32)[:, :2]  # (32, 2)
        elif obj.shape == "cube":
            th = math.radians(obj.rotation)
            self._rot = np.array([[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0], [0, 0, 1.0]])
            self._corners = obj.center + (_CUBE_SIGNS * obj.half_extent) @ self._rot.T  # (8, 3)
            self.points = cam.project(self._corners)[:, :2]  # (8, 2)
        elif obj.shape == "cylinder":
            rims = np.concatenate([_circle(np.array([obj.x, obj.y, z]), obj.radius) for z in (0.0, 2 * obj.radius)])
            self.points = cam.project(rims)[:, :2]  # (56, 2): bottom rim, then top rim
        else:
            raise ValueError(f"unknown shape {obj.shape!r}; valid shapes are cube, sphere, cylinder")
        lo, hi = self.points.min(axis=0), self.points.max(axis=0)
        self.bbox = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))  # x0, y0, x1, y1 in pixels

    @functools.cached_property
    def silhouette(self) -> np.ndarray:
        """(K, 2) convex outline in pixels."""
        return _convex_hull(self.points)

    @functools.cached_property
    def parts(self) -> list[_Part]:
        """Regions of the silhouette, each with one shading rule (drawn in this order)."""
        if self.obj.shape == "sphere":
            return [_Part(self.points, "sphere")]
        if self.obj.shape == "cylinder":
            top = self.points[len(self.points) // 2:]
            return [_Part(self.silhouette, "side"), _Part(top, "flat", np.array([0.0, 0.0, 1.0]))]
        parts = []
        for axis, sign, idx in _CUBE_FACES:
            normal = self._rot[:, axis] * sign
            if normal @ (self.cam.position - self._corners[idx].mean(axis=0)) > 0:  # skip back faces
                parts.append(_Part(self.points[idx], "flat", normal))
        return parts


def project_object(obj: SceneObject, cam: Camera) -> ObjectGeometry:
    """Project an object into the camera's image."""
    return ObjectGeometry(obj, cam)


@functools.cache
def _background(width: int, height: int, look: Look) -> np.ndarray:
    """(height, width, 3) float32 ground in the working space: darker far away (top), lighter near (bottom)."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    top, bottom = (np.asarray(c, dtype=np.float32) for c in (look.ground_top, look.ground_bottom))
    row = look.to_working(top * (1 - t) + bottom * t)  # (H, 1, 3)
    return np.ascontiguousarray(np.broadcast_to(row, (height, width, 3)))


def _shadow_mask(geoms: list[ObjectGeometry], cam: Camera, ss: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: soft ground shadows, cast away from the light."""
    img = Image.new("L", (cam.width * ss, cam.height * ss), 0)
    draw = ImageDraw.Draw(img)
    away = -_LIGHT[:2] / np.linalg.norm(_LIGHT[:2])  # ground direction of the shadows
    for g in geoms:
        o = g.obj
        c = np.array([o.x + away[0] * 0.55 * o.radius, o.y + away[1] * 0.55 * o.radius, 0.0])
        ring = cam.project(_circle(c, 1.08 * o.radius, 20))[:, :2] * ss
        draw.polygon([tuple(p) for p in ring], fill=255)
    img = img.filter(ImageFilter.BoxBlur(2 * ss))
    return np.asarray(img, dtype=np.float32) / 255.0


def _part_normals(part: _Part, g: ObjectGeometry, cam: Camera, xs: np.ndarray, ys: np.ndarray,
                  bend: float) -> np.ndarray:
    """World normals (M, 3) at pixel centres ``xs``, ``ys`` (M,) of one part."""
    cx, cy, _ = g.pixel
    to_cam = cam.position - g.obj.center
    to_cam /= np.linalg.norm(to_cam)
    right = cam.right
    up = np.cross(to_cam, right)  # screen up, orthogonal to the view direction
    if part.kind == "sphere":
        a = np.clip((xs - cx) / g.radius_px, -1, 1)
        b = np.clip(-(ys - cy) / g.radius_px, -1, 1)
        w = np.sqrt(np.clip(1 - a * a - b * b, 0, 1))
        return a[:, None] * right + b[:, None] * up + w[:, None] * to_cam
    if part.kind == "side":
        half_w = max((g.bbox[2] - g.bbox[0]) / 2.0, 1e-6)
        a = np.clip((xs - (g.bbox[0] + g.bbox[2]) / 2.0) / half_w, -1, 1)
        flat = np.array([to_cam[0], to_cam[1], 0.0])
        flat /= np.linalg.norm(flat)
        n = a[:, None] * right + np.sqrt(1 - a * a)[:, None] * flat
    else:
        mx, my = part.polygon.mean(axis=0)
        a = (xs - mx) / g.radius_px
        b = -(ys - my) / g.radius_px
        n = part.normal + bend * (a[:, None] * right + b[:, None] * up)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _specular(normals: np.ndarray, light: np.ndarray, to_cam: np.ndarray, vertical: bool, power: float) -> np.ndarray:
    """Blinn-Phong term (M, 1); a vertical surface (``vertical``) reflects the light as a vertical streak."""
    half = light + to_cam
    if vertical:
        half = half * np.array([1.0, 1.0, 0.0])
    half /= np.linalg.norm(half)
    return np.clip(normals @ half, 0, 1)[:, None] ** power


def _shade(normals: np.ndarray, base: np.ndarray, metal: bool, to_cam: np.ndarray, vertical: bool,
           exposure: float = 1.0) -> np.ndarray:
    """Colours (M, 3) in [0, 1] from normals (M, 3); ``vertical`` for a cylinder side or a cube's side face.
    ``exposure`` scales the light a surface's own colour reflects (not the highlights)."""
    diffuse = np.clip(normals @ _LIGHT, 0, 1)[:, None]  # (M, 1)
    facing = np.clip(normals @ to_cam, 0, 1)[:, None]  # (M, 1), 1 facing the camera, 0 at the rim
    base = base * exposure
    if not metal:
        return base * (0.38 + 0.72 * diffuse) * (0.82 + 0.18 * facing)
    reflected = 2 * facing * normals - to_cam  # (M, 3) mirror direction of the view ray
    env = np.clip(0.5 + 0.9 * reflected[:, 2:3], 0, 1)  # bright sky above, dark ground below
    rim = 0.3 + 0.7 * facing ** 0.8
    col = base * (0.1 + 0.45 * diffuse + 0.75 * env) * rim
    col = col + 0.95 * _specular(normals, _LIGHT, to_cam, vertical, 60) \
        + 0.3 * _specular(normals, _FILL, to_cam, vertical, 20)
    return np.clip(col, 0, 1)


def _draw_object(canvas: np.ndarray, g: ObjectGeometry, cam: Camera, ss: int, look: Look) -> None:
    """Draw one object onto ``canvas`` (H*ss, W*ss, 3) in place."""
    height, width = canvas.shape[:2]
    x0 = max(int(math.floor(g.bbox[0] * ss)) - 1, 0)
    y0 = max(int(math.floor(g.bbox[1] * ss)) - 1, 0)
    x1 = min(int(math.ceil(g.bbox[2] * ss)) + 1, width)
    y1 = min(int(math.ceil(g.bbox[3] * ss)) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return
    ids = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(ids)
    for k, part in enumerate(g.parts):
        draw.polygon([(p[0] * ss - x0, p[1] * ss - y0) for p in part.polygon], fill=k + 1)
    ids = np.asarray(ids)
    metal = g.obj.material == "metal"
    base = np.asarray(g.obj.rgb, dtype=np.float32) / 255.0  # a reflectance in the working space
    to_cam = cam.position - g.obj.center
    to_cam /= np.linalg.norm(to_cam)
    patch = canvas[y0:y1, x0:x1]  # view
    for k, part in enumerate(g.parts):
        rows, cols = np.nonzero(ids == k + 1)
        if rows.size == 0:
            continue
        xs = (cols + x0 + 0.5) / ss  # pixel centres in image coordinates
        ys = (rows + y0 + 0.5) / ss
        normals = _part_normals(part, g, cam, xs, ys, bend=0.55 if metal else 0.3)
        vertical = part.kind == "side" or (part.kind == "flat" and abs(part.normal[2]) < 0.5)
        patch[rows, cols] = _shade(normals, base, metal, to_cam, vertical, look.exposure)


def render_scene(geoms: list[ObjectGeometry], cam: Camera, supersample: int = 2,
                 look: Look | None = None) -> Image.Image:
    """Draw projected objects (any order; drawn far to near) with shadows; returns an RGB image.

    ``look``: the colour pipeline (default :class:`Look`, CLEVR's linear one)."""
    look = look or Look()
    ss = supersample
    shadow = 0.42 if look.color_space == "display" else 0.6  # the same visible darkening after encoding
    canvas = _background(cam.width * ss, cam.height * ss, look) * (
        1.0 - shadow * _shadow_mask(geoms, cam, ss))[:, :, None]
    for g in sorted(geoms, key=lambda g: -g.pixel[2]):
        _draw_object(canvas, g, cam, ss, look)
    canvas = look.to_display(canvas)
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    return img.reduce(ss) if ss > 1 else img
