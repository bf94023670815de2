"""Deterministic mini datasets, so the whole pipeline runs end to end in minutes.

Everything is drawn from ``numpy.random.default_rng`` seeded by the caller: the same
seed always gives byte-identical arrays (and PNG files / JSON for the COCO set).

The classification classes are defined by *shape or structure*, never by colour or
exact position, so they survive the SSL augmentations (random-resized-crop with scale
0.2-1, flips, colour jitter, grayscale): an SSL method that learns anything useful on
them must learn shape, which is what linear evaluation then measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from sslaug.data.formats import ArrayDataset

MINI_CLASSES = (
    "circle",
    "ring",
    "square",
    "triangle",
    "cross",
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "dots",
)
_SUPERSAMPLE = 2  # draw at 2x and average: anti-aliased edges at negligible cost
_NOISE_STD = 8.0


# --------------------------------------------------------------------------- classification


def make_mini_classification(
    seed: int,
    num_classes: int = 10,
    train_per_class: int = 200,
    test_per_class: int = 50,
    size: int = 32,
) -> ArrayDataset:
    """Shape/structure classes at random position, scale, rotation and colours, plus noise.

    Train and test come from independent child seeds, so changing ``train_per_class``
    does not change the test set.
    """
    if not 1 <= num_classes <= len(MINI_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(MINI_CLASSES)}, got {num_classes}")
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    splits = {
        "train": _draw_split(np.random.default_rng(train_seq), num_classes, train_per_class, size),
        "test": _draw_split(np.random.default_rng(test_seq), num_classes, test_per_class, size),
    }
    return ArrayDataset(name="mini", classes=list(MINI_CLASSES[:num_classes]), splits=splits)


def _draw_split(rng: np.random.Generator, num_classes: int, per_class: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``per_class`` images of each class in a shuffled order."""
    labels = rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int64), per_class))
    n = labels.shape[0]
    alpha = np.empty((n, size, size), dtype=np.float32)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        alpha[idx] = _class_alpha(rng, c, idx.shape[0], size)
    fg, bg = _contrasting_colours(rng, n)
    img = bg[:, None, None, :] + alpha[..., None] * (fg - bg)[:, None, None, :]
    img += rng.normal(0.0, _NOISE_STD, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def _contrasting_colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Foreground/background colours with a luminance gap, so grayscale keeps the shape."""
    dark = rng.uniform(15, 100, size=(n, 1))
    light = rng.uniform(155, 240, size=(n, 1))
    fg_light = rng.random((n, 1)) < 0.5
    fg_level = np.where(fg_light, light, dark)
    bg_level = np.where(fg_light, dark, light)
    fg = np.clip(fg_level + rng.uniform(-35, 35, size=(n, 3)), 0, 255)
    bg = np.clip(bg_level + rng.uniform(-35, 35, size=(n, 3)), 0, 255)
    return fg.astype(np.float32), bg.astype(np.float32)


def _class_alpha(rng: np.random.Generator, c: int, n: int, size: int) -> np.ndarray:
    """Foreground coverage in [0, 1] (n x size x size) for ``n`` images of class ``c``."""
    s = size * _SUPERSAMPLE
    grid = (np.arange(s, dtype=np.float32) + 0.5) / s * 2 - 1  # pixel centres in [-1, 1]
    cx = rng.uniform(-0.35, 0.35, n).astype(np.float32)[:, None, None]
    cy = rng.uniform(-0.35, 0.35, n).astype(np.float32)[:, None, None]
    radius = rng.uniform(0.4, 0.75, n).astype(np.float32)[:, None, None]
    theta = _class_rotation(rng, MINI_CLASSES[c], n)[:, None, None]
    # Stripe period 4-8 output pixels, in the [-1, 1] coordinate units.
    period = (rng.uniform(4, 8, n) * 2 / size).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy
    cos, sin = np.cos(theta), np.sin(theta)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    mask = _SHAPES[MINI_CLASSES[c]](u, v, radius, period, phase)
    return mask.astype(np.float32).reshape(n, size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(2, 4))


def _class_rotation(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    """Rotation angles: free for shapes, near-fixed for oriented stripe classes."""
    jitter = rng.uniform(-0.17, 0.17, n)  # ~ +-10 degrees
    if name in ("horizontal_stripes", "vertical_stripes"):
        return jitter.astype(np.float32)
    if name == "diagonal_stripes":
        # Both diagonals: a horizontal flip maps one onto the other, so the class must hold both.
        sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
        return (sign * np.pi / 4 + jitter).astype(np.float32)
    return rng.uniform(0, 2 * np.pi, n).astype(np.float32)


def _stripes(w: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * w / period + phase) > 0


_ShapeFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
_SQRT3_2 = np.float32(np.sqrt(3) / 2)

# Each takes rotated coordinates u, v (centred on the object) and per-image radius,
# stripe period and phase; shapes use (u, v) / radius, textures fill the whole image.
_SHAPES: dict[str, _ShapeFn] = {
    "circle": lambda u, v, r, p, ph: (u * u + v * v) < r * r,
    "ring": lambda u, v, r, p, ph: ((u * u + v * v) < r * r) & ((u * u + v * v) > (0.55 * r) ** 2),
    "square": lambda u, v, r, p, ph: np.maximum(np.abs(u), np.abs(v)) < 0.8 * r,
    # Intersection of three half-planes at 120 degrees: an equilateral triangle.
    "triangle": lambda u, v, r, p, ph: (-v < 0.55 * r)
    & (_SQRT3_2 * u + 0.5 * v < 0.55 * r)
    & (-_SQRT3_2 * u + 0.5 * v < 0.55 * r),
    "cross": lambda u, v, r, p, ph: ((np.abs(u) < 0.28 * r) & (np.abs(v) < 0.95 * r))
    | ((np.abs(v) < 0.28 * r) & (np.abs(u) < 0.95 * r)),
    "horizontal_stripes": lambda u, v, r, p, ph: _stripes(v, p, ph),
    "vertical_stripes": lambda u, v, r, p, ph: _stripes(u, p, ph),
    "diagonal_stripes": lambda u, v, r, p, ph: _stripes(v, p, ph),
    "checkerboard": lambda u, v, r, p, ph: (np.sin(np.pi * u / p + ph) * np.sin(np.pi * v / p + ph)) > 0,
    "dots": lambda u, v, r, p, ph: (np.cos(2 * np.pi * u / (1.5 * p) + ph) + np.cos(2 * np.pi * v / (1.5 * p) + ph))
    > 1.0,
}


# --------------------------------------------------------------------------- styles

_SKIMAGE_STYLE_IMAGES = ("brick", "grass", "gravel", "coffee", "chelsea", "astronaut")


def make_mini_styles(seed: int, n: int = 32, size: int = 32) -> ArrayDataset:
    """A style-image set: split ``train`` only, labels -1.

    Random crops of scikit-image's sample photos and textures when scikit-image is
    importable, else procedural textures; ``extra["generator"]`` ("skimage" or
    "procedural") goes into meta.json because the two differ for the same seed.
    """
    rng = np.random.default_rng(seed)
    photos = _skimage_photos()
    if photos:
        images = np.stack([_random_crop(rng, photos[rng.integers(len(photos))], size) for _ in range(n)])
        origin = "skimage"
    else:
        images = np.stack([_procedural_texture(rng, size) for _ in range(n)])
        origin = "procedural"
    labels = np.full(n, -1, dtype=np.int64)
    return ArrayDataset(name="mini_styles", classes=[], splits={"train": (images, labels)}, extra={"generator": origin})


def _skimage_photos() -> list[np.ndarray]:
    """scikit-image's bundled sample images as RGB uint8, or [] without scikit-image."""
    try:
        from skimage import data as skdata  # optional dependency
    except ImportError:
        return []
    photos = []
    for name in _SKIMAGE_STYLE_IMAGES:
        try:
            img = np.asarray(getattr(skdata, name)())
        except Exception:  # noqa: BLE001 - a missing/unfetchable sample image is simply skipped
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        photos.append(img[..., :3].astype(np.uint8))
    return photos


def _random_crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> np.ndarray:
    """A random square crop (30-100% of the shorter side) resized to ``size``."""
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.BICUBIC), dtype=np.uint8)


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smoothly interpolated random grid values in [0, 1] (size x size)."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.arange(size) / size * cells
    i = np.floor(t).astype(int)
    f = t - i
    f = f * f * (3 - 2 * f)  # smoothstep: no visible grid lines
    a, b = grid[i][:, i], grid[i][:, i + 1]
    c, d = grid[i + 1][:, i], grid[i + 1][:, i + 1]
    top = a + (b - a) * f[None, :]
    bottom = c + (d - c) * f[None, :]
    return top + (bottom - top) * f[:, None]


def _fractal(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Multi-octave value noise, normalised to [0, 1]."""
    out = sum(0.5**k * _value_noise(rng, size, 2 ** (k + 1)) for k in range(octaves))
    return (out - out.min()) / (np.ptp(out) + 1e-8)


def _texture_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A scalar texture in [0, 1]: noise, marble, wood, bricks, cells or waves."""
    y, x = np.mgrid[0:size, 0:size] / size
    kind = rng.integers(6)
    if kind == 0:
        return _fractal(rng, size)
    if kind == 1:  # marble: turbulent sine bands
        fx, fy = rng.uniform(1, 4, 2)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (fx * x + fy * y) + 6 * _fractal(rng, size))
    if kind == 2:  # wood: noisy concentric rings
        cx, cy = rng.uniform(-0.5, 1.5, 2)
        dist = np.hypot(x - cx, y - cy) * rng.uniform(5, 12) + 2 * _fractal(rng, size)
        return dist - np.floor(dist)
    if kind == 3:  # bricks: offset rows with mortar lines
        rows, cols = rng.integers(3, 7), rng.integers(2, 5)
        ry = y * rows
        rx = x * cols + 0.5 * (np.floor(ry) % 2)
        mortar = (ry - np.floor(ry) < 0.12) | (rx - np.floor(rx) < 0.06)
        return np.where(mortar, 0.1, 0.6 + 0.4 * _fractal(rng, size))
    if kind == 4:  # cells: distance to the nearest of a few random points
        pts = rng.random((int(rng.integers(5, 15)), 2))
        d = np.min(np.hypot(x[..., None] - pts[:, 0], y[..., None] - pts[:, 1]), axis=-1)
        return d / (d.max() + 1e-8)
    waves = sum(
        np.sin(2 * np.pi * (rng.uniform(-6, 6) * x + rng.uniform(-6, 6) * y) + rng.uniform(0, 6.3)) for _ in range(3)
    )
    return (waves + 3) / 6


def _procedural_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour texture: a scalar field mapped through a random 3-colour palette."""
    t = _texture_field(rng, size)[..., None]
    c0, c1, c2 = rng.uniform(0, 255, (3, 3))
    lo = c0 + (c1 - c0) * np.clip(2 * t, 0, 1)
    img = np.where(t < 0.5, lo, c1 + (c2 - c1) * np.clip(2 * t - 1, 0, 1))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- coco

MINI_COCO_CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
)
_POLYGON_VERTICES = {1: 24, 2: 4, 3: 3}


@dataclass
class CocoSplit:
    """One split in memory: (file name, RGB uint8 image) pairs and the COCO JSON dict."""

    images: list[tuple[str, np.ndarray]]
    coco: dict[str, Any]


def make_mini_coco(seed: int, n_train: int = 32, n_val: int = 16, size: int = 64) -> dict[str, CocoSplit]:
    """A tiny COCO detection set: circles, squares and triangles, 1-3 per image.

    Each object is a polygon (its COCO segmentation) filled on a noisy background; the
    box is the polygon's extent and the area its shoelace area.
    """
    train_seq, val_seq = np.random.SeedSequence(seed).spawn(2)
    return {
        "train": _coco_split(np.random.default_rng(train_seq), n_train, size),
        "val": _coco_split(np.random.default_rng(val_seq), n_val, size),
    }


def _coco_split(rng: np.random.Generator, n: int, size: int) -> CocoSplit:
    images, infos, anns = [], [], []
    for image_id in range(1, n + 1):
        file_name = f"{image_id:06d}.png"
        img, objects = _coco_image(rng, size)
        images.append((file_name, img))
        infos.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for cat_id, poly in objects:
            anns.append(_coco_annotation(len(anns) + 1, image_id, cat_id, poly))
    coco = {
        "info": {"description": "sslaug mini_coco (synthetic shapes)", "version": "1.0"},
        "licenses": [],
        "images": infos,
        "annotations": anns,
        "categories": [dict(c) for c in MINI_COCO_CATEGORIES],
    }
    return CocoSplit(images=images, coco=coco)


def _coco_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw 1-3 non-overlapping shapes; return the image and (category, polygon) pairs."""
    bg = rng.uniform(0, 255, 3)
    canvas = Image.fromarray(np.full((size, size, 3), np.rint(bg), dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    objects: list[tuple[int, np.ndarray]] = []
    boxes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            cat_id = int(rng.integers(1, len(MINI_COCO_CATEGORIES) + 1))
            r = rng.uniform(0.12, 0.25) * size
            centre = rng.uniform(r, size - r, 2)
            poly = _regular_polygon(centre, r, _POLYGON_VERTICES[cat_id], rng.uniform(0, 2 * np.pi))
            box = np.concatenate([poly.min(0), poly.max(0)])
            if all(_box_iou(box, b) == 0.0 for b in boxes):
                break
        else:
            continue  # image too crowded: fewer objects
        fg = (bg + rng.choice([-1, 1], 3) * rng.uniform(80, 160, 3)) % 256  # contrast with the background
        draw.polygon([tuple(p) for p in poly], fill=tuple(int(c) for c in fg))
        objects.append((cat_id, poly))
        boxes.append(box)
    img = np.asarray(canvas, dtype=np.float32) + rng.normal(0, _NOISE_STD, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


def _regular_polygon(centre: np.ndarray, r: float, k: int, angle: float) -> np.ndarray:
    t = angle + 2 * np.pi * np.arange(k) / k
    return np.round(np.stack([centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)], axis=1), 2)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _coco_annotation(ann_id: int, image_id: int, cat_id: int, poly: np.ndarray) -> dict[str, Any]:
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    xs, ys = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_id,
        "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
        "area": round(area, 2),
        "iscrowd": 0,
        "segmentation": [[round(float(c), 2) for c in poly.reshape(-1)]],
    }


#: Keypoints of the mini "person": three points of each object's box, so Keypoint R-CNN
#: (MSR Table 5) has something learnable on generated data.
MINI_KEYPOINT_NAMES = ["top", "left", "right"]


def mini_person_keypoints(coco: dict) -> dict:
    """COCO person-keypoints JSON for a mini COCO split: every object becomes a 'person'
    with keypoints at its box's top centre, left middle and right middle."""
    annotations = []
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        keypoints = [x + w / 2, y, 2, x, y + h / 2, 2, x + w, y + h / 2, 2]
        annotations.append({**ann, "category_id": 1, "keypoints": keypoints, "num_keypoints": 3})
    category = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": MINI_KEYPOINT_NAMES,
        "skeleton": [[1, 2], [1, 3]],
    }
    return {**coco, "annotations": annotations, "categories": [category]}
