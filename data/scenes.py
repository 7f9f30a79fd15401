"""ShapesMT: generated multi-task scenes whose dense labels agree exactly, for multi-task dense prediction
(VMT-Adapter, Xin et al., AAAI 2024, arXiv 2312.08733, evaluates on PASCAL-Context's semantic segmentation, human
parts, saliency and surface normals; no real dataset with these four labels ships in any package, so this module
renders a miniature with the same four label types).

A scene is a textured floor seen from above with objects standing on it (min_objects..max_objects, 2-4 by
default), each a height field: a disc (a spherical cap), a square (a pyramid), a triangle (a ramp) or a person-like
figure (a spherical-cap head, a cylindrical torso and two cylindrical legs). Objects are drawn in a random order, a
later one in front of (over) an earlier one. From that one geometry every output follows:

* ``image`` uint8 (N, H, W, 3): each surface textured (checker, stripes, value noise; the OOD split may use textures
  no other split has) in two random colours (random hues: colour alone does not tell the class), Lambertian shading
  with a random light direction from the surface normals, plus Gaussian sensor noise;
* ``semseg`` uint8 (N, H, W): SEMSEG_CLASSES (0 background); ``parts`` uint8 (N, H, W): PARTS_CLASSES of the figures'
  pixels (0 elsewhere: the floor and the other objects are "not a part"); ``saliency`` uint8 (N, H, W): 1 on the
  visible pixels of the largest visible object, 0 elsewhere; 255 in any label map is the ignore index (IGNORE), which
  the renderer itself never writes but every consumer honours;
* ``normals`` float32 (N, H, W, 3): the unit normal of the visible surface, (-dh/dx, -dh/dy, 1) normalised, axes
  x = column (right), y = row (down), z = towards the viewer, from the analytic gradient of the height field h (in
  pixels); exactly (0, 0, 0) (invalid) on the pixels next to a height step between two surfaces, where no gradient
  exists.

Splits (SCENE_SPLIT_ROLES, data/views.py): ``train`` (fit), ``val`` (val), ``test`` and ``ood`` (test: read by the
evaluate step only). ``ood`` is out of distribution by ``ood_kind``: ``texture`` (its surfaces wear UNSEEN_TEXTURES,
which no other split and no proxy image has) or ``crowded`` (more objects than any in-distribution scene: a shape mix,
and an amount of occlusion, never seen in training). Scene i of a split depends only on (seed, split, i), so a split
does not change when another's size does.

A dataset directory (data/dataset_dir.py) holds ``scenes.npz`` (compressed; keys ``<split>_<field>``) and
``meta.json`` (class names, image size, seed, the difficulty parameters, counts, textures per split). The proxy
classification set for pre-training a backbone (``build_proxy``: one object per image, label = shape x texture) uses
the same renderer and is stored in data/images.py's image-classification layout.

Both are byte-for-byte reproducible from the same parameters and numpy version. Pure numpy: the layering rule of the
README (tests/unit/test_layers.py).
"""
from __future__ import annotations

import argparse
import colorsys
import importlib.metadata
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data.dataset_dir import load_split_fields, write_dataset_dir
from data.drift import ClassDriftBounds
from data.images import RawImages, load_image_dataset, render_disjoint_splits, write_image_dataset
from data.views import FIT, TEST, VAL, DatasetView, Withheld

SCENES_FILE = "scenes.npz"
FORMAT_VERSION = 1
SCENE_SPLITS = ("train", "val", "test", "ood")
SCENE_SPLIT_ROLES = {"train": FIT, "val": VAL, "test": TEST, "ood": TEST}
FIELDS = ("image", "semseg", "parts", "saliency", "normals")
SEMSEG_CLASSES = ("background", "disc", "square", "triangle", "figure")
OBJECT_CLASSES = SEMSEG_CLASSES[1:]
FIGURE = SEMSEG_CLASSES.index("figure")
PARTS_CLASSES = ("background", "head", "torso", "legs")  # 0 also on every pixel that is not a figure's
IGNORE = 255
TEXTURES = ("checker", "stripes", "noise")  # every split but an ood split of kind "texture"; the proxy set
UNSEEN_TEXTURES = ("dots", "rings")  # only the ood split of kind "texture"
OOD_KINDS = ("texture", "crowded")
CROWDED_EXTRA = (1, 3)  # a crowded ood scene holds max_objects + 1 .. max_objects + 3 objects
AMBIENT = 0.35  # share of the light that reaches every surface, whatever its normal


@dataclass(frozen=True)
class SceneParams:
    """How scenes are drawn: image side, objects per scene, object size, sensor noise (the difficulty) and the
    kind of the ood split."""

    size: int = 64
    min_objects: int = 2
    max_objects: int = 4
    min_radius: float = 0.12  # object radius as a fraction of the image side
    max_radius: float = 0.22
    noise_std: float = 6.0  # grey levels of Gaussian sensor noise
    ood_kind: str = "texture"

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"min_objects must be >= 1 and <= max_objects, got {self.min_objects} and "
                             f"{self.max_objects}")
        if not 0.02 <= self.min_radius <= self.max_radius <= 0.3:
            raise ValueError(f"min_radius and max_radius must satisfy 0.02 <= min_radius <= max_radius <= 0.3, got "
                             f"{self.min_radius} and {self.max_radius}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.ood_kind not in OOD_KINDS:
            raise ValueError(f"ood_kind must be one of {', '.join(OOD_KINDS)}, got {self.ood_kind!r}")


@dataclass(frozen=True)
class SceneSplit:
    """The scenes of one split, arrays as stored (validation sees bad data as it is)."""

    image: np.ndarray  # (N, H, W, 3) uint8
    semseg: np.ndarray  # (N, H, W) uint8 in 0..S-1 or IGNORE
    parts: np.ndarray  # (N, H, W) uint8 in 0..P-1 or IGNORE
    saliency: np.ndarray  # (N, H, W) uint8 in {0, 1} or IGNORE
    normals: np.ndarray  # (N, H, W, 3) float32, unit or exactly 0 (invalid)

    def __len__(self) -> int:
        return len(self.image)

    def subset(self, keep: np.ndarray) -> SceneSplit:
        """The scenes that `keep` (a mask or indices) selects."""
        return SceneSplit(**{name: getattr(self, name)[keep] for name in FIELDS})


@dataclass(frozen=True)
class SceneDataset:
    """A built ShapesMT dataset as its view lets a step read it; a withheld split is a `Withheld` stand-in."""

    train: SceneSplit | Withheld
    val: SceneSplit | Withheld
    test: SceneSplit | Withheld
    ood: SceneSplit | Withheld
    meta: dict[str, Any] = field(repr=False)

    def split(self, name: str) -> SceneSplit | Withheld:
        if name not in SCENE_SPLITS:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(SCENE_SPLITS)}")
        return getattr(self, name)

    def readable(self, split: str) -> bool:
        """Whether this step may read `split` (False: it is withheld)."""
        return not isinstance(self.split(split), Withheld)


class DenseSuiteSpec(BaseModel):
    """What a paper config declares about its dense multi-task dataset; the `dense_multitask` suite is built from it.
    Label maps hold 0..K-1 or `ignore_index`; normals are unit vectors or exactly (0, 0, 0) where invalid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    semseg_classes: int = Field(gt=1, description="semantic classes, background (0) included")
    parts_classes: int = Field(gt=1, description="part classes, 0 (not a part) included")
    parts_of: int | None = Field(None, ge=1, description="the semseg class whose pixels alone may carry a part "
                                 "(None: any object's)")
    ignore_index: int = Field(IGNORE, ge=0, le=255)
    min_scenes_per_split: int = Field(1, ge=1)
    normal_tolerance: float = Field(1e-3, gt=0, lt=1, description="largest | |n| - 1 | of a valid normal")
    min_valid_normals: float = Field(0.5, ge=0, le=1, description="least share of a scene's pixels with a valid "
                                     "normal")
    value_range: tuple[float, float] = (0.0, 255.0)  # of the image's pixels: the drift bounds' unit
    drift: ClassDriftBounds = ClassDriftBounds()

    @model_validator(mode="after")
    def _check_consistency(self) -> DenseSuiteSpec:
        if self.parts_of is not None and self.parts_of >= self.semseg_classes:
            raise ValueError(f"parts_of {self.parts_of} is not a semseg class (0..{self.semseg_classes - 1})")
        if self.ignore_index < max(self.semseg_classes, self.parts_classes):
            raise ValueError(f"ignore_index {self.ignore_index} is a class index; use one above every class")
        return self


# ------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Surface:
    """One object's pieces on the pixel grid: where it is, its height field and the analytic gradient."""

    mask: np.ndarray  # (H, W) bool
    height: np.ndarray  # (H, W) float64, pixels; meaningful inside mask
    dh_dx: np.ndarray  # (H, W) float64
    dh_dy: np.ndarray  # (H, W) float64
    part: np.ndarray  # (H, W) uint8, PARTS_CLASSES index inside mask (0 for objects without parts)


@dataclass(frozen=True)
class RenderedScene:
    """One scene with what produced it: the stored fields, the visible height field, which object each pixel shows
    (0 floor, i = the i-th object drawn) and the objects' (class, texture)."""

    image: np.ndarray
    semseg: np.ndarray
    parts: np.ndarray
    saliency: np.ndarray
    normals: np.ndarray
    height: np.ndarray  # (H, W) float64
    instances: np.ndarray  # (H, W) int64
    objects: tuple[tuple[str, str], ...]
    floor_texture: str


def _cap(dx: np.ndarray, dy: np.ndarray, radius: float) -> tuple[np.ndarray, ...]:
    """A spherical cap of base `radius` cut from a sphere of radius 1.6 x radius (rim slope about 39 degrees):
    (mask, height, dh/dx, dh/dy) at offsets (dx, dy) from its centre. With dy = 0 everywhere: a cylinder lying
    along y whose cross-section is that cap, `radius` its half-width."""
    sphere = 1.6 * radius
    d2 = dx * dx + dy * dy
    mask = d2 < radius * radius
    root = np.sqrt(np.maximum(sphere * sphere - d2, 1e-9))
    return mask, root - np.sqrt(sphere * sphere - radius * radius), -dx / root, -dy / root


def object_surface(kind: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float,
                   angle: float) -> Surface:
    """Object `kind` (OBJECT_CLASSES) of size `radius` centred at (cx, cy), turned by `angle` (the figure stays
    upright), on the pixel-centre grid (x, y)."""
    dx, dy = x - cx, y - cy
    zeros = np.zeros_like(x)
    no_part = np.zeros(x.shape, np.uint8)
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # object frame

    def to_image(dh_du: np.ndarray, dh_dv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return dh_du * cos - dh_dv * sin, dh_du * sin + dh_dv * cos

    if kind == "disc":
        mask, height, gx, gy = _cap(dx, dy, radius)
        return Surface(mask, height, gx, gy, no_part)
    if kind == "square":  # a pyramid of slope 0.8 over a square of half-side 0.85 radius
        half, slope = 0.85 * radius, 0.8
        along_u = np.abs(u) >= np.abs(v)
        mask = np.maximum(np.abs(u), np.abs(v)) < half
        gx, gy = to_image(np.where(along_u, -slope * np.sign(u), 0.0), np.where(along_u, 0.0, -slope * np.sign(v)))
        return Surface(mask, slope * (half - np.maximum(np.abs(u), np.abs(v))), gx, gy, no_part)
    if kind == "triangle":  # an equilateral triangle of circumradius `radius`, a ramp of slope 0.6 towards its apex
        slope = 0.6
        edge_normals = [(np.sin(a), -np.cos(a)) for a in (np.pi, np.pi / 3, -np.pi / 3)]  # outward
        mask = np.all([nu * u + nv * v < radius / 2 for nu, nv in edge_normals], axis=0)
        gx, gy = to_image(zeros, np.full_like(x, -slope))
        return Surface(mask, slope * (radius / 2 - v), gx, gy, no_part)
    if kind == "figure":  # head (cap), torso and two legs (upright cylinders); parts labelled
        head_mask, head_h, head_gx, head_gy = _cap(dx, dy + 0.8 * radius, 0.35 * radius)
        torso_in, torso_h, torso_gx, _ = _cap(dx, zeros, 0.5 * radius)
        torso_mask = torso_in & (dy >= -0.45 * radius) & (dy < 0.35 * radius)
        leg_dx = np.abs(dx) - 0.27 * radius  # offset from the nearer leg's axis
        leg_in, leg_h, leg_gx, _ = _cap(leg_dx, zeros, 0.16 * radius)
        leg_mask = leg_in & (dy >= 0.35 * radius) & (dy < radius)
        mask = head_mask | torso_mask | leg_mask
        height = np.select([head_mask, torso_mask], [head_h, torso_h], leg_h)
        gx = np.select([head_mask, torso_mask], [head_gx, torso_gx], leg_gx * np.sign(dx))
        gy = np.where(head_mask, head_gy, 0.0)
        part = np.select([head_mask, torso_mask, leg_mask], [1, 2, 3], 0).astype(np.uint8)
        return Surface(mask, height, gx, gy, part)
    raise ValueError(f"unknown object kind {kind!r}; kinds: {', '.join(OBJECT_CLASSES)}")


# ------------------------------------------------------------------------------------------ appearance


def _value_noise(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cells: int, size: int) -> np.ndarray:
    """Bilinearly interpolated random values on a cells x cells lattice over the image, in [0, 1]."""
    lattice = rng.random((cells + 1, cells + 1))
    gx, gy = x / size * cells, y / size * cells
    ix, iy = np.minimum(gx.astype(int), cells - 1), np.minimum(gy.astype(int), cells - 1)
    fx, fy = gx - ix, gy - iy
    top = lattice[iy, ix] * (1 - fx) + lattice[iy, ix + 1] * fx
    bottom = lattice[iy + 1, ix] * (1 - fx) + lattice[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def texture(kind: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Texture `kind` in [0, 1] at (x, y), with a random period, phase and orientation."""
    period = rng.uniform(4.0, 9.0)
    angle, phase = rng.uniform(0, np.pi), rng.uniform(0, period, 2)
    u = np.cos(angle) * x + np.sin(angle) * y + phase[0]
    v = -np.sin(angle) * x + np.cos(angle) * y + phase[1]
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    if kind == "stripes":
        return (np.sin(2 * np.pi * u / period) > 0).astype(np.float64)
    if kind == "noise":
        return _value_noise(rng, x, y, int(rng.integers(5, 10)), size)
    if kind == "dots":
        cu, cv = u % period - period / 2, v % period - period / 2
        return (cu * cu + cv * cv < (0.3 * period) ** 2).astype(np.float64)
    if kind == "rings":
        centre = rng.uniform(0, size, 2)
        return (np.sin(2 * np.pi * np.hypot(x - centre[0], y - centre[1]) / period) > 0).astype(np.float64)
    raise ValueError(f"unknown texture {kind!r}; textures: {', '.join(TEXTURES + UNSEEN_TEXTURES)}")


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two clearly different colours of random hue: a texture alternates between them."""
    hue = rng.random()
    first = colorsys.hsv_to_rgb(hue, rng.uniform(0.4, 0.9), rng.uniform(0.7, 1.0))
    second = colorsys.hsv_to_rgb((hue + rng.uniform(0.25, 0.75)) % 1.0, rng.uniform(0.3, 0.9), rng.uniform(0.25, 0.6))
    return np.array(first), np.array(second)


def _albedo(kind: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) colours in [0, 1] of a surface wearing texture `kind`."""
    first, second = _colour_pair(rng)
    mix = texture(kind, rng, x, y, size)[..., None]
    return first * (1 - mix) + second * mix


# -------------------------------------------------------------------------------------------- scenes


def scene_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of scene `index` of `stream` (a split name, or a proxy split): scenes are independent."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), index])


def render_scene(rng: np.random.Generator, params: SceneParams, objects: Sequence[tuple[str, str]],
                 floor_texture: str) -> RenderedScene:
    """A scene with `objects` ((class, texture) pairs, drawn in this order) on a floor wearing `floor_texture`."""
    size = params.size
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    height, dh_dx, dh_dy = np.zeros((size, size)), np.zeros((size, size)), np.zeros((size, size))
    instances = np.zeros((size, size), np.int64)
    semseg = np.zeros((size, size), np.uint8)
    parts = np.zeros((size, size), np.uint8)
    albedo = _albedo(floor_texture, rng, x, y, size)
    for index, (kind, texture_kind) in enumerate(objects, start=1):
        radius = rng.uniform(params.min_radius, params.max_radius) * size
        margin = 1.15 * radius  # the figure's head reaches 1.15 radius above its centre
        cx, cy = rng.uniform(margin, size - margin, 2)
        # Only the object's bounding box is computed (a turned square's corner reaches 1.2 radius from its centre).
        reach = 1.25 * radius
        box = (slice(max(int(cy - reach), 0), int(cy + reach) + 1), slice(max(int(cx - reach), 0), int(cx + reach) + 1))
        surface = object_surface(kind, x[box], y[box], cx, cy, radius, rng.uniform(0, 2 * np.pi))
        on = surface.mask
        height[box][on], dh_dx[box][on], dh_dy[box][on] = surface.height[on], surface.dh_dx[on], surface.dh_dy[on]
        instances[box][on], semseg[box][on], parts[box][on] = index, SEMSEG_CLASSES.index(kind), surface.part[on]
        albedo[box][on] = _albedo(texture_kind, rng, x[box], y[box], size)[on]

    normals = np.stack([-dh_dx, -dh_dy, np.ones_like(dh_dx)], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(np.pi / 6, np.pi / 2.5)
    light = np.array([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)])
    shade = AMBIENT + (1 - AMBIENT) * np.clip(normals @ light, 0.0, None)
    pixels = albedo * shade[..., None] * 255.0 + rng.normal(0.0, params.noise_std, (size, size, 3))
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    # No gradient across a step between two surfaces (objects, or a figure's parts): those normals are invalid.
    surface_id = instances * len(PARTS_CLASSES) + parts
    step = np.zeros((size, size), bool)
    step[:, 1:] |= surface_id[:, 1:] != surface_id[:, :-1]
    step[:, :-1] |= surface_id[:, :-1] != surface_id[:, 1:]
    step[1:] |= surface_id[1:] != surface_id[:-1]
    step[:-1] |= surface_id[:-1] != surface_id[1:]
    normals[step] = 0.0

    visible = np.bincount(instances.ravel(), minlength=len(objects) + 1)[1:]
    saliency = (instances == 1 + int(np.argmax(visible))).astype(np.uint8)  # ties: the first drawn
    return RenderedScene(image=image, semseg=semseg, parts=parts, saliency=saliency,
                         normals=normals.astype(np.float32), height=height, instances=instances,
                         objects=tuple(objects), floor_texture=floor_texture)


def split_textures(split: str, ood_kind: str) -> tuple[str, ...]:
    """The textures the surfaces of `split` wear."""
    return UNSEEN_TEXTURES if split == "ood" and ood_kind == "texture" else TEXTURES


def draw_scene(seed: int, split: str, index: int, params: SceneParams) -> RenderedScene:
    """Scene `index` of `split`: its object count, classes and textures drawn as the split's distribution says."""
    rng = scene_rng(seed, split, index)
    low, high = params.min_objects, params.max_objects
    if split == "ood" and params.ood_kind == "crowded":
        low, high = high + CROWDED_EXTRA[0], high + CROWDED_EXTRA[1]
    textures = split_textures(split, params.ood_kind)
    count = int(rng.integers(low, high + 1))
    objects = [(OBJECT_CLASSES[int(rng.integers(len(OBJECT_CLASSES)))], textures[int(rng.integers(len(textures)))])
               for _ in range(count)]
    return render_scene(rng, params, objects, textures[int(rng.integers(len(textures)))])


def render_split(seed: int, split: str, count: int, params: SceneParams) -> SceneSplit:
    """Scenes 0..count-1 (count >= 1) of `split`, stacked."""
    scenes = [draw_scene(seed, split, index, params) for index in range(count)]
    return SceneSplit(**{name: np.stack([getattr(scene, name) for scene in scenes]) for name in FIELDS})


def _numpy_source(loader: str) -> dict[str, str]:
    return {"package": "numpy", "version": importlib.metadata.version("numpy"), "loader": loader}


LICENCE = "generated by this project (no third-party content)"


def build_scenes(out_dir: str | Path, counts: dict[str, int], params: SceneParams = SceneParams(),
                 seed: int = 0) -> Path:
    """Render `counts[split]` scenes of every split of SCENE_SPLITS into `out_dir` (replaced if present). A val,
    test or ood scene whose image repeats one of an earlier split is dropped (none is expected: every scene has
    its own noise), so no scene straddles two splits; how many were dropped is recorded in meta.json."""
    if set(counts) != set(SCENE_SPLITS) or min(counts.values()) < 1:
        raise ValueError(f"counts must give every split of {', '.join(SCENE_SPLITS)} at least one scene, got {counts}")
    splits, dropped = render_disjoint_splits(SCENE_SPLITS,
                                             lambda split: render_split(seed, split, counts[split], params))
    meta = {
        "format_version": FORMAT_VERSION,
        "name": "shapes_mt",
        "source": _numpy_source("data.scenes.build_scenes"),
        "licence": LICENCE,
        "semseg_classes": list(SEMSEG_CLASSES),
        "parts_classes": list(PARTS_CLASSES),
        "parts_of": FIGURE,
        "ignore_index": IGNORE,
        "saliency": "the visible pixels of the largest visible object",
        "normals": "unit (x right, y down, z towards the viewer); (0, 0, 0) where invalid",
        "height": params.size,
        "width": params.size,
        "seed": seed,
        "params": asdict(params),
        "textures": {split: list(split_textures(split, params.ood_kind)) for split in SCENE_SPLITS},
        "counts": {split: len(splits[split]) for split in SCENE_SPLITS},
        "duplicates_dropped": dropped,
    }
    arrays = {f"{split}_{name}": getattr(splits[split], name) for split in SCENE_SPLITS for name in FIELDS}
    # np.savez_compressed is byte-reproducible: zipfile stamps members opened by name with the fixed 1980-01-01 date.
    return write_dataset_dir(Path(out_dir), meta, lambda staging: np.savez_compressed(
        staging / SCENES_FILE, allow_pickle=False, **arrays))


# --------------------------------------------------------------------------------------------- proxy


def proxy_classes() -> list[str]:
    """The proxy task's class names: every object class x every in-distribution texture."""
    return [f"{kind}/{texture_kind}" for kind in OBJECT_CLASSES for texture_kind in TEXTURES]


def build_proxy(out_dir: str | Path, per_class: int, val_per_class: int, test_per_class: int,
                params: SceneParams = SceneParams(), seed: int = 0) -> Path:
    """An image-classification dataset (data/images.py's layout) for pre-training a backbone on the scenes'
    appearance: each image one object of class shape x texture (proxy_classes) on a floor of a random
    in-distribution texture, rendered like the scenes (UNSEEN_TEXTURES never appear)."""
    if min(per_class, val_per_class, test_per_class) < 1:
        raise ValueError(f"per_class, val_per_class and test_per_class must be >= 1, got {per_class}, "
                         f"{val_per_class} and {test_per_class}")
    names = proxy_classes()
    per_split = {"train": per_class, "val": val_per_class, "test": test_per_class}
    arrays: dict[str, np.ndarray] = {}
    for split, count in per_split.items():
        images, labels = [], []
        for label, name in enumerate(names):
            kind, texture_kind = name.split("/")
            for index in range(count):
                rng = scene_rng(seed, f"proxy-{split}-{name}", index)
                floor = TEXTURES[int(rng.integers(len(TEXTURES)))]
                images.append(render_scene(rng, params, [(kind, texture_kind)], floor).image)
                labels.append(label)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = np.stack(images), np.array(labels, dtype=np.int64)
    everything = np.concatenate([arrays[f"x_{split}"] for split in per_split])
    raw = RawImages(images=everything, labels=np.concatenate([arrays[f"y_{split}"] for split in per_split]),
                    classes=list(range(len(names))), class_names=names,
                    source=_numpy_source("data.scenes.build_proxy"), licence=LICENCE)
    return write_image_dataset(Path(out_dir), "shapes_mt_proxy", raw, arrays, {"val": 0, "test": 0},
                               {"per_class": per_class, "val_per_class": val_per_class,
                                "test_per_class": test_per_class, "seed": seed, **asdict(params)})


# ------------------------------------------------------------------------------------------- loading


def load_scene_dataset(source: str | Path | DatasetView) -> SceneDataset:
    """Load a directory written by `build_scenes` (a path: every split; a view: the splits its step may read, the
    others withheld); errors name the file and what is wrong with it."""
    meta, splits = load_split_fields(source, SCENES_FILE, ("semseg_classes", "parts_classes", "height", "width"),
                                     SCENE_SPLIT_ROLES, FIELDS, "scenes")
    return SceneDataset(meta=meta, **{split: fields if isinstance(fields, Withheld) else SceneSplit(**fields)
                                      for split, fields in splits.items()})


# --------------------------------------------------------------------------------------- contact sheet

# Label colours: distinct for the first classes, white for the ignore index.
_PALETTE = np.zeros((256, 3), np.uint8)
_PALETTE[:8] = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
                (145, 30, 180), (70, 240, 240)]
_PALETTE[8:255] = (np.random.default_rng(0).random((247, 3)) * 200 + 55).astype(np.uint8)
_PALETTE[IGNORE] = (255, 255, 255)


def contact_sheet(split: SceneSplit, n: int = 8) -> np.ndarray:
    """(min(n, N) * H, 5 * W, 3) uint8: a row per scene (the first n), columns image, semseg, parts, saliency
    (label maps in a fixed palette, ignore in white) and normals ((n + 1) / 2 as RGB, invalid black)."""
    rows = []
    for index in range(min(n, len(split))):
        normals = split.normals[index]
        shown = np.where(np.any(normals != 0, axis=-1, keepdims=True), (normals + 1.0) * 127.5, 0.0)
        rows.append(np.concatenate([split.image[index], _PALETTE[split.semseg[index]], _PALETTE[split.parts[index]],
                                    _PALETTE[split.saliency[index]], np.rint(shown).astype(np.uint8)], axis=1))
    if not rows:
        raise ValueError("contact_sheet needs at least one scene")
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m data.scenes build --out DIR ...` and `python -m data.scenes build-proxy --out DIR ...`: the
    commands of the DVC stages shapes_mt and shapes_mt_proxy. A bad parameter is one `error:` line and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m data.scenes", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    scenes_cmd = commands.add_parser("build", help="render ShapesMT scenes (scenes.npz + meta.json)")
    proxy_cmd = commands.add_parser("build-proxy", help="render the shape x texture proxy classification set "
                                    "(images.npz + meta.json, the image-classification layout)")
    for command in (scenes_cmd, proxy_cmd):
        command.add_argument("--out", required=True, help="output directory (replaced if it exists)")
        command.add_argument("--size", type=int, default=SceneParams.size)
        command.add_argument("--noise-std", type=float, default=SceneParams.noise_std)
        command.add_argument("--seed", type=int, default=0)
    for split in SCENE_SPLITS:
        scenes_cmd.add_argument(f"--{split}", type=int, required=True, help=f"scenes in the {split} split")
    scenes_cmd.add_argument("--min-objects", type=int, default=SceneParams.min_objects)
    scenes_cmd.add_argument("--max-objects", type=int, default=SceneParams.max_objects)
    scenes_cmd.add_argument("--ood-kind", default=SceneParams.ood_kind, help=f"one of {', '.join(OOD_KINDS)}")
    proxy_cmd.add_argument("--per-class", type=int, required=True, help="train images per class")
    proxy_cmd.add_argument("--val-per-class", type=int, required=True)
    proxy_cmd.add_argument("--test-per-class", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            params = SceneParams(size=args.size, min_objects=args.min_objects, max_objects=args.max_objects,
                                 noise_std=args.noise_std, ood_kind=args.ood_kind)
            out = build_scenes(args.out, {split: getattr(args, split) for split in SCENE_SPLITS}, params, args.seed)
            counts = load_scene_dataset(out).meta["counts"]
            print("shapes_mt: " + " / ".join(f"{counts[s]} {s}" for s in SCENE_SPLITS)
                  + f" scenes {args.size}x{args.size} -> {out}")
        else:
            params = SceneParams(size=args.size, noise_std=args.noise_std)
            out = build_proxy(args.out, args.per_class, args.val_per_class, args.test_per_class, params, args.seed)
            counts = load_image_dataset(out).meta["counts"]
            print(f"shapes_mt_proxy: {counts['train']} train / {counts['val']} val / {counts['test']} test images "
                  f"of {len(proxy_classes())} classes -> {out}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
