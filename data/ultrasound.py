"""USDevices: generated carotid-like ultrasound images seen through several device models, for single-source domain
generalisation of segmentation (MI-SegNet, Bi et al., MICCAI 2023, arXiv 2303.12649, trains on one machine's carotid
images and tests on images of unseen machines; its data are not in any package, so this module renders a miniature
with the same structure: one anatomy distribution, several appearances).

A scene is a beam-space section (depth x lateral, ``depth_mm`` on each side) of layered neck tissue (a bright skin
line, hypoechoic fat, striated muscle, speckled deep tissue) holding a common carotid artery (an anechoic elliptic
lumen inside a bright wall ring, sometimes a second smaller lumen beside it) and often a jugular vein (anechoic,
flattened, with a faint wall: a dark region that is NOT labelled, so darkness alone does not find the lumen). The
label is the carotid lumen (1), background 0. The fluid brightens the tissue below it (posterior enhancement).

A device (DeviceParams) turns the echogenicity map into an image: a complex Gaussian scatterer field scaled by the
square root of the echogenicity (fully developed speckle), blurred by the device's point-spread function (axial width
from the centre frequency and bandwidth, lateral from the frequency and f-number: the speckle grain and the edge
blur), depth attenuation partly undone by time-gain compensation, overall gain, additive electronic noise, envelope,
log compression to the dynamic range, a gamma curve, scan conversion (linear: the beam grid as is; a fan of
``sector_deg``: the beam grid warped to a sector, the mask through exactly the same map) and post-smoothing. The
source device is ``linear``; the targets (``convex``, ``phased``, ``linear_smooth``) are moved away from it by
``severity`` (0: the source itself, 1: the target as its parameters say).

Splits (SPLIT_ROLES, data/views.py): ``train`` (fit) and ``val`` (val, every choice of a run including the
checkpoint) on the source device, and one test split per target device (``test_<device>``, read by the evaluate step
only). Scene i of a split depends only on (seed, split, i): every split draws its own anatomies, so no scene is in
two splits, and a split does not change when another's size does.

A dataset directory (data/dataset_dir.py) holds ``ultrasound.npz`` (compressed; per split ``<split>_image`` uint8
(N, H, W), ``<split>_mask`` uint8 (N, H, W) in {0, 1}, ``<split>_device`` uint8 (N,) the device id (DEVICES index)
and ``<split>_anatomy`` float64 (N, len(ANATOMY_FIELDS)), the scene's geometry) and ``meta.json`` (devices with the
parameters they were rendered with, the device of every split, image size, seed, counts).

The paired appearance / spatial transforms MI-SegNet trains with (its Dataset_loader.py, Pair_Adv_Dataset_loader)
are ``draw_style`` / ``apply_style`` (appearance only: never the mask), ``draw_spatial`` / ``apply_spatial`` (image
and mask through one map) and ``paired_views`` (x1, x2, x12, x21, y1, y2).

Byte-for-byte reproducible from the same parameters and numpy / scipy versions. numpy and scipy only: the layering
rule of the README (tests/unit/test_layers.py).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from data.dataset_dir import load_split_fields, write_dataset_dir
from data.drift import ClassDriftBounds
from data.images import render_disjoint_splits
from data.views import FIT, TEST, VAL, DatasetView, Withheld

ULTRASOUND_FILE = "ultrasound.npz"
FORMAT_VERSION = 1
SOURCE_DEVICE = "linear"
TARGET_DEVICES = ("convex", "phased", "linear_smooth")
DEVICES = (SOURCE_DEVICE, *TARGET_DEVICES)  # a stored device id is an index into this
SPLITS = ("train", "val", *(f"test_{device}" for device in TARGET_DEVICES))
SPLIT_ROLES = {"train": FIT, "val": VAL, **{f"test_{device}": TEST for device in TARGET_DEVICES}}
SPLIT_DEVICES = {"train": SOURCE_DEVICE, "val": SOURCE_DEVICE, **{f"test_{d}": d for d in TARGET_DEVICES}}
FIELDS = ("image", "mask", "device", "anatomy")
CLASSES = ("background", "lumen")
SOUND_SPEED_MM_PER_US = 1.54
FWHM_PER_SIGMA = 2.3548


@dataclass(frozen=True)
class DeviceParams:
    """How one ultrasound machine and probe turn echogenicity into an image."""

    frequency_mhz: float = 7.5  # centre frequency: wavelength, hence PSF size, and attenuation
    bandwidth: float = 0.7  # fractional: a wider band gives a shorter pulse (finer axial grain)
    f_number: float = 1.5  # focal depth / aperture: lateral PSF width = wavelength x f_number
    attenuation_db_cm_mhz: float = 0.5  # tissue attenuation, one way
    tgc: float = 0.9  # share of the round-trip attenuation the time-gain compensation undoes
    gain_db: float = 0.0
    noise: float = 0.01  # electronic noise amplitude, relative to the echo of plain tissue
    dynamic_range_db: float = 60.0  # of the log compression
    gamma: float = 1.0  # display curve applied to the compressed [0, 1] values
    smoothing_px: float = 0.0  # speckle-reduction post-smoothing (Gaussian sigma, output pixels)
    sector_deg: float = 0.0  # 0: linear probe (rectangular image); > 0: a fan of this opening angle

    def __post_init__(self) -> None:
        positive = ("frequency_mhz", "bandwidth", "f_number", "dynamic_range_db", "gamma")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("attenuation_db_cm_mhz", "noise", "smoothing_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.tgc <= 1:
            raise ValueError(f"tgc must lie in [0, 1], got {self.tgc}")
        if not 0 <= self.sector_deg <= 120:
            raise ValueError(f"sector_deg must lie in [0, 120], got {self.sector_deg}")


# The device table (data/ultrasound.py's defaults; params.yaml holds the values a build uses).
DEFAULT_DEVICES: dict[str, DeviceParams] = {
    "linear": DeviceParams(),
    "convex": DeviceParams(frequency_mhz=3.5, bandwidth=0.6, f_number=2.5, attenuation_db_cm_mhz=0.7, tgc=0.6,
                           gain_db=3.0, noise=0.02, dynamic_range_db=55.0, gamma=1.3, sector_deg=60.0),
    "phased": DeviceParams(frequency_mhz=2.5, bandwidth=0.5, f_number=3.0, attenuation_db_cm_mhz=0.6, tgc=0.7,
                           gain_db=-3.0, noise=0.04, dynamic_range_db=50.0, gamma=0.8, sector_deg=80.0),
    "linear_smooth": DeviceParams(frequency_mhz=5.0, bandwidth=0.6, f_number=2.0, tgc=0.9, gain_db=2.0,
                                  dynamic_range_db=65.0, smoothing_px=1.2),
}


def device_at(source: DeviceParams, target: DeviceParams, severity: float) -> DeviceParams:
    """`target` moved towards `source`: every parameter source + severity x (target - source); severity 0 is the
    source device, 1 the target as given."""
    if not 0 <= severity <= 1:
        raise ValueError(f"severity must lie in [0, 1], got {severity}")
    return DeviceParams(**{f.name: getattr(source, f.name) + severity * (getattr(target, f.name)
                                                                            - getattr(source, f.name))
                           for f in fields(DeviceParams)})


@dataclass(frozen=True)
class UltrasoundParams:
    """What every device shares: image side, the field of view, the PSF scale, the severity of the targets and the
    device table."""

    size: int = 64  # pixels per side, beam space and the stored image alike
    depth_mm: float = 30.0  # imaged depth (and lateral width of the beam grid)
    # ASSUMED (no official code): at 64 px a pixel is ~0.5 mm, coarser than every probe's PSF, so real PSF widths
    # would give pixel-sized speckle on every device; PSF widths are multiplied by psf_scale so the devices' grain
    # and edge blur differ at the miniature's resolution as they do at a scanner's.
    psf_scale: float = 2.0
    severity: float = 1.0
    devices: dict[str, DeviceParams] = field(default_factory=lambda: dict(DEFAULT_DEVICES))

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be >= 32 pixels, got {self.size}")
        if not 20 <= self.depth_mm <= 80:
            raise ValueError(f"depth_mm must lie in [20, 80], got {self.depth_mm}")
        if self.psf_scale <= 0:
            raise ValueError(f"psf_scale must be > 0, got {self.psf_scale}")
        if not 0 <= self.severity <= 1:
            raise ValueError(f"severity must lie in [0, 1], got {self.severity}")
        if set(self.devices) != set(DEVICES):
            raise ValueError(f"devices must name exactly {', '.join(DEVICES)}, got {', '.join(self.devices)}")

    def rendered_device(self, name: str) -> DeviceParams:
        """Device `name` as rendered: a target moved by the severity, the source as given."""
        if name == SOURCE_DEVICE:
            return self.devices[name]
        return device_at(self.devices[SOURCE_DEVICE], self.devices[name], self.severity)


@dataclass(frozen=True)
class UltrasoundSplit:
    """The images of one split, arrays as stored (validation sees bad data as it is)."""

    image: np.ndarray  # (N, H, W) uint8
    mask: np.ndarray  # (N, H, W) uint8 in {0, 1}: the carotid lumen
    device: np.ndarray  # (N,) uint8, DEVICES index
    anatomy: np.ndarray  # (N, len(ANATOMY_FIELDS)) float64

    def __len__(self) -> int:
        return len(self.image)

    def subset(self, keep: np.ndarray) -> UltrasoundSplit:
        return UltrasoundSplit(**{name: getattr(self, name)[keep] for name in FIELDS})


@dataclass(frozen=True)
class UltrasoundDataset:
    """A built USDevices dataset as its view lets a step read it; a withheld split is a `Withheld` stand-in."""

    splits: dict[str, UltrasoundSplit | Withheld]
    meta: dict[str, Any] = field(repr=False)

    def split(self, name: str) -> UltrasoundSplit | Withheld:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return self.splits[name]

    def readable(self, split: str) -> bool:
        return not isinstance(self.split(split), Withheld)


class UltrasoundSuiteSpec(BaseModel):
    """What a paper config declares about its device-shift segmentation dataset; the `us_device_segmentation` suite
    is built from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    min_images_per_split: int = Field(1, ge=1)
    min_mask_pixels: int = Field(1, ge=1, description="least lumen pixels of an image (every image shows one)")
    max_mask_share: float = Field(0.5, gt=0, le=1, description="largest share of an image's pixels in the mask")
    min_image_std: float = Field(2.0, ge=0, description="least grey-level standard deviation (a blank image fails)")
    max_saturated_share: float = Field(0.05, ge=0, le=1, description="largest share of pixels at 255 (clipped)")
    value_range: tuple[float, float] = (0.0, 255.0)  # of the image's pixels: the drift bounds' unit
    drift: ClassDriftBounds = ClassDriftBounds()


# ------------------------------------------------------------------------------------------- anatomy

ANATOMY_FIELDS = (
    "fat_end", "muscle_end", "striation_period",  # layer depths (mm)
    "lumen_x", "lumen_z", "lumen_a", "lumen_b", "lumen_angle",  # carotid lumen ellipse (mm, radians)
    "branch", "branch_x", "branch_z", "branch_a", "branch_b",  # second lumen (branch 1: present)
    "wall_mm",  # carotid wall thickness
    "vein", "vein_x", "vein_z", "vein_a", "vein_b",  # jugular vein (vein 1: present), never labelled
)


@dataclass(frozen=True)
class Anatomy:
    """One scene's geometry, in mm (x lateral from the left edge, z depth from the skin) and radians."""

    fat_end: float
    muscle_end: float
    striation_period: float
    lumen_x: float
    lumen_z: float
    lumen_a: float
    lumen_b: float
    lumen_angle: float
    branch: float
    branch_x: float
    branch_z: float
    branch_a: float
    branch_b: float
    wall_mm: float
    vein: float
    vein_x: float
    vein_z: float
    vein_a: float
    vein_b: float

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, name) for name in ANATOMY_FIELDS], np.float64)

    @classmethod
    def from_vector(cls, values: np.ndarray) -> Anatomy:
        return cls(**{name: float(value) for name, value in zip(ANATOMY_FIELDS, values, strict=True)})


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of scene `index` of `split`: scenes are independent, splits draw different anatomies."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _ellipse_distance(x: np.ndarray, z: np.ndarray, cx: float, cz: float, a: float, b: float,
                      angle: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse of semi-axes a (along angle) and b."""
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * (x - cx) + sin * (z - cz), -sin * (x - cx) + cos * (z - cz)
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def draw_anatomy(rng: np.random.Generator, depth_mm: float) -> Anatomy:
    """A random neck section: layers, a carotid lumen below the muscle (30 % of scenes with a second, smaller lumen
    beside it) and, in 60 %, a flattened jugular vein on the other side, never overlapping the carotid."""
    width = depth_mm
    fat_end = rng.uniform(3.0, 6.0)
    muscle_end = fat_end + rng.uniform(3.0, 6.0)
    striation = rng.uniform(1.2, 2.0)
    radius = rng.uniform(2.5, 4.5)
    a, b = radius * rng.uniform(0.9, 1.1), radius * rng.uniform(0.9, 1.1)
    wall = rng.uniform(0.6, 1.0)
    reach = max(a, b) + wall
    lumen_z = rng.uniform(muscle_end + reach + 1.0, 0.85 * depth_mm - reach)
    lumen_x = rng.uniform(0.3 * width, 0.7 * width)
    angle = rng.uniform(0.0, np.pi)
    branch = [0.0] * 5
    if rng.random() < 0.3:
        scale = rng.uniform(0.6, 0.8)
        ba, bb = a * scale, b * scale
        side = 1.0 if rng.random() < 0.5 else -1.0
        for direction in (side, -side):
            bx = lumen_x + direction * (reach + max(ba, bb) + wall + 0.5)
            if max(ba, bb) + wall + 0.5 < bx < width - max(ba, bb) - wall - 0.5:
                branch = [1.0, bx, lumen_z + rng.uniform(-1.5, 1.5), ba, bb]
                break
    vein = [0.0] * 5
    if rng.random() < 0.6:
        va, vb = rng.uniform(4.0, 7.0), rng.uniform(1.5, 3.0)
        vz = rng.uniform(muscle_end + vb + 0.5, lumen_z)
        occupied = [lumen_x - reach, lumen_x + reach]
        if branch[0]:
            occupied = [min(occupied[0], branch[1] - branch[3] - wall), max(occupied[1], branch[1] + branch[3] + wall)]
        left_room, right_room = occupied[0], width - occupied[1]
        if max(left_room, right_room) > 2 * va * 0.6 + 1.0:  # room for 60 % of its width or more on one side
            va = min(va, (max(left_room, right_room) - 1.0) / 2)  # 0.5 mm from the carotid and from the edge
            vx = occupied[0] - 0.5 - va if left_room >= right_room else occupied[1] + 0.5 + va
            vein = [1.0, vx, vz, va, vb]
    return Anatomy(fat_end, muscle_end, striation, lumen_x, lumen_z, a, b, angle, *branch, wall, *vein)


def _beam_grid(size: int, depth_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, z) in mm of the beam-space pixel centres (rows: depth, columns: lateral)."""
    pitch = depth_mm / size
    z, x = (np.mgrid[0:size, 0:size] + 0.5) * pitch
    return x, z


def lumen_mask(anatomy: Anatomy, size: int, depth_mm: float) -> np.ndarray:
    """(size, size) bool in beam space: the pixel centres inside a carotid lumen (the label)."""
    x, z = _beam_grid(size, depth_mm)
    inside = _ellipse_distance(x, z, anatomy.lumen_x, anatomy.lumen_z, anatomy.lumen_a, anatomy.lumen_b,
                               anatomy.lumen_angle) < 1
    if anatomy.branch:
        inside |= _ellipse_distance(x, z, anatomy.branch_x, anatomy.branch_z, anatomy.branch_a, anatomy.branch_b) < 1
    return inside


def echogenicity(anatomy: Anatomy, rng: np.random.Generator, size: int, depth_mm: float) -> np.ndarray:
    """(size, size) float64 mean backscatter power per beam-space pixel (plain tissue ~1, the lumen ~0)."""
    x, z = _beam_grid(size, depth_mm)
    cells = 5
    lattice = ndimage.zoom(rng.random((cells, cells)), size / cells, order=1)  # slow tissue variation
    echo = np.select([z < 1.0, z < anatomy.fat_end, z < anatomy.muscle_end],
                     [np.full_like(z, 4.0), np.full_like(z, 0.35),
                      1.0 + 0.6 * np.sin(2 * np.pi * z / anatomy.striation_period)],
                     0.6 + 0.8 * lattice)
    vessels = [(anatomy.lumen_x, anatomy.lumen_z, anatomy.lumen_a, anatomy.lumen_b, anatomy.lumen_angle)]
    if anatomy.branch:
        vessels.append((anatomy.branch_x, anatomy.branch_z, anatomy.branch_a, anatomy.branch_b, 0.0))
    fluid = np.zeros_like(z, bool)
    for cx, cz, a, b, angle in vessels:
        wall = _ellipse_distance(x, z, cx, cz, a + anatomy.wall_mm, b + anatomy.wall_mm, angle) < 1
        echo[wall] = 6.0
    if anatomy.vein:
        vein_wall = _ellipse_distance(x, z, anatomy.vein_x, anatomy.vein_z, anatomy.vein_a + 0.3,
                                      anatomy.vein_b + 0.3) < 1
        echo[vein_wall] = 1.4
        vein = _ellipse_distance(x, z, anatomy.vein_x, anatomy.vein_z, anatomy.vein_a, anatomy.vein_b) < 1
        fluid |= vein
    fluid |= lumen_mask(anatomy, size, depth_mm)
    below = np.maximum.accumulate(fluid, axis=0) & ~fluid  # posterior enhancement under fluid
    echo[below] *= 1.4
    echo[fluid] = 1e-4  # anechoic: below every device's noise floor
    return echo


# ------------------------------------------------------------------------------------------- devices


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Unit-sum 1-D Gaussian of `sigma` pixels, truncated at 3 sigma; a delta below 0.05 px."""
    if sigma < 0.05:
        return np.ones(1)
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def psf_sigmas(device: DeviceParams, pixel_mm: float, psf_scale: float) -> tuple[float, float]:
    """(axial, lateral) Gaussian PSF sigma in beam pixels: axial FWHM = wavelength / (2 bandwidth) (the pulse's
    half length), lateral FWHM = wavelength x f-number, both times psf_scale."""
    wavelength = SOUND_SPEED_MM_PER_US / device.frequency_mhz
    axial = wavelength / (2 * device.bandwidth) / FWHM_PER_SIGMA
    lateral = wavelength * device.f_number / FWHM_PER_SIGMA
    return psf_scale * axial / pixel_mm, psf_scale * lateral / pixel_mm


@dataclass(frozen=True)
class FanMap:
    """Scan conversion of a size x size beam grid to a fan: for each output pixel, the beam-space (row, column) it
    shows and whether it lies in the field of view at all."""

    rows: np.ndarray  # (size, size) float64 beam row per output pixel
    cols: np.ndarray  # (size, size) float64 beam column per output pixel
    inside: np.ndarray  # (size, size) bool


def fan_map(size: int, sector_deg: float) -> FanMap:
    """The fan of opening `sector_deg` whose arc at mid-depth is as long as the linear grid is wide (so the fan
    tends to the linear image as the angle closes): apex at R0 = W / theta - D / 2 above the skin (W = D = 1 here),
    beams from -theta/2 to theta/2, the sector's bounding box scaled to fit the output, top-aligned and centred."""
    theta = np.radians(sector_deg)
    apex = 1.0 / theta - 0.5
    far = apex + 1.0
    half_width, top = far * np.sin(theta / 2), apex * np.cos(theta / 2)
    scale = max(2 * half_width, far - top) / size  # beam-depth units per output pixel
    i, j = np.mgrid[0:size, 0:size] + 0.5
    x, y = (j - size / 2) * scale, top + i * scale
    radius, phi = np.hypot(x, y), np.arctan2(x, y)
    rows, cols = (radius - apex) * size - 0.5, (phi / theta + 0.5) * size - 0.5
    inside = (radius >= apex) & (radius <= far) & (np.abs(phi) <= theta / 2)
    return FanMap(rows, cols, inside)


def scan_convert(beam: np.ndarray, fan: FanMap, order: int) -> np.ndarray:
    """`beam` (size, size) on the fan: interpolated with `order` (1 the image, 0 the mask: the same map), 0 outside
    the field of view."""
    values = ndimage.map_coordinates(beam, [fan.rows, fan.cols], order=order, mode="nearest")
    return np.where(fan.inside, values, 0).astype(beam.dtype)


def render(anatomy: Anatomy, device: DeviceParams, rng: np.random.Generator, params: UltrasoundParams,
           echo: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W) uint8, mask (H, W) uint8 in {0, 1}) of `anatomy` through `device` (`echo`: its echogenicity
    map if already drawn)."""
    size, pixel_mm = params.size, params.depth_mm / params.size
    if echo is None:
        echo = echogenicity(anatomy, rng, size, params.depth_mm)
    scatter = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) / np.sqrt(2)
    signal = scatter * np.sqrt(echo)
    axial, lateral = psf_sigmas(device, pixel_mm, params.psf_scale)
    k_axial, k_lateral = _gaussian_kernel(axial), _gaussian_kernel(lateral)
    for axis, kernel in ((0, k_axial), (1, k_lateral)):
        signal = (ndimage.correlate1d(signal.real, kernel, axis=axis, mode="reflect")
                  + 1j * ndimage.correlate1d(signal.imag, kernel, axis=axis, mode="reflect"))
    signal /= np.sqrt(np.sum(k_axial ** 2) * np.sum(k_lateral ** 2))  # plain tissue keeps unit mean power
    depth_cm = (np.arange(size) + 0.5) * pixel_mm / 10
    loss_db = (1 - device.tgc) * 2 * device.attenuation_db_cm_mhz * device.frequency_mhz * depth_cm
    signal *= 10 ** ((device.gain_db - loss_db[:, None]) / 20)
    noise = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) * device.noise / np.sqrt(2)
    envelope_db = 20 * np.log10(np.abs(signal + noise) + 1e-12)
    top_db = 20.0  # the brightest shown echo, over plain tissue's
    shown = np.clip((envelope_db - top_db + device.dynamic_range_db) / device.dynamic_range_db, 0, 1) ** device.gamma
    mask = lumen_mask(anatomy, size, params.depth_mm).astype(np.uint8)
    if device.sector_deg > 0:
        fan = fan_map(size, device.sector_deg)
        shown, mask = scan_convert(shown, fan, order=1), scan_convert(mask, fan, order=0)
    if device.smoothing_px > 0:
        shown = ndimage.gaussian_filter(shown, device.smoothing_px, mode="reflect")
    return np.rint(shown * 255).astype(np.uint8), mask


def draw_scene(seed: int, split: str, index: int, params: UltrasoundParams) -> tuple[np.ndarray, np.ndarray, Anatomy]:
    """Scene `index` of `split` through the split's device: (image, mask, anatomy)."""
    rng = scene_rng(seed, split, index)
    anatomy = draw_anatomy(rng, params.depth_mm)
    image, mask = render(anatomy, params.rendered_device(SPLIT_DEVICES[split]), rng, params)
    return image, mask, anatomy


def render_split(seed: int, split: str, count: int, params: UltrasoundParams) -> UltrasoundSplit:
    """Scenes 0..count-1 of `split`, stacked."""
    scenes = [draw_scene(seed, split, index, params) for index in range(count)]
    device = DEVICES.index(SPLIT_DEVICES[split])
    return UltrasoundSplit(image=np.stack([s[0] for s in scenes]), mask=np.stack([s[1] for s in scenes]),
                           device=np.full(count, device, np.uint8),
                           anatomy=np.stack([s[2].vector() for s in scenes]))


LICENCE = "generated by this project (no third-party content)"


def build_ultrasound(out_dir: str | Path, counts: dict[str, int], params: UltrasoundParams = UltrasoundParams(),
                     seed: int = 0) -> Path:
    """Render `counts[split]` scenes of every split of SPLITS into `out_dir` (replaced if present). An image that
    repeats one of an earlier split is dropped (none is expected), and the count recorded in meta.json."""
    if set(counts) != set(SPLITS) or min(counts.values()) < 1:
        raise ValueError(f"counts must give every split of {', '.join(SPLITS)} at least one scene, got {counts}")
    splits, dropped = render_disjoint_splits(SPLITS,
                                             lambda split: render_split(seed, split, counts[split], params))
    meta = {
        "format_version": FORMAT_VERSION,
        "name": "us_devices",
        "source": {"package": "numpy", "version": importlib.metadata.version("numpy"),
                   "scipy": importlib.metadata.version("scipy"), "loader": "data.ultrasound.build_ultrasound"},
        "licence": LICENCE,
        "classes": list(CLASSES),
        "height": params.size,
        "width": params.size,
        "seed": seed,
        "depth_mm": params.depth_mm,
        "psf_scale": params.psf_scale,
        "severity": params.severity,
        "devices": list(DEVICES),
        "device_params": {name: asdict(params.devices[name]) for name in DEVICES},
        "rendered_device_params": {name: asdict(params.rendered_device(name)) for name in DEVICES},
        "split_devices": dict(SPLIT_DEVICES),
        "anatomy_fields": list(ANATOMY_FIELDS),
        "counts": {split: len(splits[split]) for split in SPLITS},
        "duplicates_dropped": dropped,
    }
    arrays = {f"{split}_{name}": getattr(splits[split], name) for split in SPLITS for name in FIELDS}
    return write_dataset_dir(Path(out_dir), meta, lambda staging: np.savez_compressed(
        staging / ULTRASOUND_FILE, allow_pickle=False, **arrays))


# ------------------------------------------------------------------------------------------- loading


def load_ultrasound_dataset(source: str | Path | DatasetView) -> UltrasoundDataset:
    """Load a directory written by `build_ultrasound` (a path: every split; a view: the splits its step may read,
    the others withheld); errors name the file and what is wrong with it."""
    meta, splits = load_split_fields(source, ULTRASOUND_FILE, ("height", "width", "split_devices"), SPLIT_ROLES,
                                     FIELDS, "images")
    return UltrasoundDataset(splits={split: fields if isinstance(fields, Withheld) else UltrasoundSplit(**fields)
                                     for split, fields in splits.items()}, meta=meta)


# --------------------------------------------------------------------------------------- contact sheet


def contact_sheet(split: UltrasoundSplit, n: int = 8) -> np.ndarray:
    """(min(n, N) * H, 3 * W, 3) uint8: a row per image (the first n), columns image, mask (white lumen) and the
    image with the lumen tinted red."""
    rows = []
    for index in range(min(n, len(split))):
        grey = np.repeat(split.image[index][..., None], 3, axis=-1)
        lumen = split.mask[index] == 1
        overlay = grey.copy()
        overlay[lumen] = (0.5 * grey[lumen] + [127.5, 0, 0]).astype(np.uint8)
        rows.append(np.concatenate([grey, np.repeat((lumen * 255).astype(np.uint8)[..., None], 3, axis=-1),
                                    overlay], axis=1))
    if not rows:
        raise ValueError("contact_sheet needs at least one image")
    return np.concatenate(rows, axis=0)


def device_sheet(params: UltrasoundParams, seed: int = 0, n: int = 4) -> np.ndarray:
    """(n * H, len(DEVICES) * W) uint8: n anatomies (rows), each through every device as rendered (columns, in
    DEVICES order), the same speckle draw in every column: what changes along a row is the device alone."""
    rows = []
    for index in range(n):
        rng = scene_rng(seed, "device_sheet", index)
        anatomy = draw_anatomy(rng, params.depth_mm)
        echo = echogenicity(anatomy, rng, params.size, params.depth_mm)
        state = rng.bit_generator.state
        tiles = []
        for name in DEVICES:
            rng.bit_generator.state = state
            tiles.append(render(anatomy, params.rendered_device(name), rng, params, echo)[0])
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


# ------------------------------------------------------------------------- MI-SegNet's paired transforms
# Pair_Adv_Dataset_loader in the official Dataset_loader.py draws, per view, 5 style and 3 spatial uniforms for
# "is it active" and 5 + 3 for "how strong"; these functions keep that draw so the resampling rule is the same.

STYLE_WEIGHTS = np.array([5.0, 2.0, 1.0, 4.0, 3.0])  # sharpen, blur, noise, brightness, gamma
STYLE_ACTIVE = 0.1  # each style op applies with this probability
STYLE_ACTIVE_FOR_DIFFERENCE = 0.3  # the official resampling test's threshold (a quirk we keep: 0.3, not 0.1)
ANCHORS = 9  # crop anchors: corners, edge centres, centre


@dataclass(frozen=True)
class StyleDraw:
    """Appearance transform: op k (sharpen, blur, noise, brightness, gamma) applies when active[k] < 0.1, with
    strength alpha[k] in [0, 1]."""

    active: np.ndarray  # (5,) uniforms
    alpha: np.ndarray  # (5,) uniforms


@dataclass(frozen=True)
class SpatialDraw:
    """Spatial transform: crop when active[0] < 0.5 (window alpha[0:2] * 0.2 + 0.7 of the height and width at the
    anchor picked by active[1]), horizontal flip when active[2] < 0.05."""

    active: np.ndarray  # (3,) uniforms
    alpha: np.ndarray  # (3,) uniforms


def draw_style(rng: np.random.Generator) -> StyleDraw:
    return StyleDraw(rng.random(5), rng.random(5))


def draw_spatial(rng: np.random.Generator) -> SpatialDraw:
    return SpatialDraw(rng.random(3), rng.random(3))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    # ASSUMED: the official code blurs with cv2.GaussianBlur (kernel of about 3 sigma for 8-bit images, border
    # reflect-101); scipy's gaussian_filter with truncate 3 and mode "mirror" is the same filter up to rounding.
    return ndimage.gaussian_filter(image.astype(np.float64), sigma, mode="mirror", truncate=3.0)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def apply_style(image: np.ndarray, style: StyleDraw, rng: np.random.Generator) -> np.ndarray:
    """`image` (H, W) uint8 with the active appearance ops, in the official order: unsharp masking of a blurred
    copy (amount 10-30), Gaussian blur (sigma 0.25-1.5), additive Gaussian noise (sigma 0.01-0.05 of 255, drawn
    from `rng`), brightness shift (-0.1..0.1 of 255) and a gamma curve (exponent 1 / (0.5-3.0)). Only the
    appearance changes: there is no mask argument."""
    alpha = style.alpha
    active = style.active < STYLE_ACTIVE
    out = image
    if active[0]:
        amount = alpha[0] * 20 + 10
        blurred = _blur(out, 1.0)
        out = _to_uint8((amount + 1) * blurred - amount * _blur(blurred, 1.0))
    if active[1]:
        out = _to_uint8(_blur(out, alpha[1] * 1.25 + 0.25))
    if active[2]:
        noisy = out + rng.normal(0.0, alpha[2] * 0.04 + 0.01, out.shape) * 255
        out = np.clip(noisy, 0, 255).astype(np.uint8)  # truncated, as the official astype('uint8')
    if active[3]:
        out = _to_uint8(out.astype(np.int64) + int((alpha[3] * 0.2 - 0.1) * 255))
    if active[4]:
        table = ((np.arange(256) / 255) ** (1 / (alpha[4] * 2.5 + 0.5)) * 255).astype(np.uint8)
        out = table[out]
    return out


def crop_anchor(height: int, width: int, crop_h: float, crop_w: float, anchor: float) -> tuple[int, int]:
    """Top-left corner of the crop window at the anchor `anchor` (a uniform) picks, as the official code does."""
    slot = min(int(anchor / 0.111), ANCHORS - 1)  # 0..8: rows top, bottom, middle; columns left, right, centre
    row_of = {0: 0, 1: int(height * (1 - crop_h)), 2: int(height * (1 - crop_h) // 2)}
    col_of = {0: 0, 1: int(width * (1 - crop_w)), 2: int(width * (1 - crop_w) // 2)}
    return row_of[slot // 3], col_of[slot % 3]


def spatial_coordinates(height: int, width: int, spatial: SpatialDraw) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) (H, W): the source position each output pixel of the spatial transform shows."""
    rows, cols = (np.mgrid[0:height, 0:width] + 0.5).astype(np.float64)  # pixel centres of the output
    if spatial.active[2] < 0.05:  # the official code flips the cropped image: output column j shows its W-1-j
        cols = width - cols
    if spatial.active[0] < 0.5:  # the window, resized back with pixel centres aligned (as cv2.resize does)
        crop_h, crop_w = spatial.alpha[0] * 0.2 + 0.7, spatial.alpha[1] * 0.2 + 0.7
        size_h, size_w = int(height * crop_h), int(width * crop_w)
        top, left = crop_anchor(height, width, crop_h, crop_w, spatial.active[1])
        rows, cols = top + rows * size_h / height, left + cols * size_w / width
    return rows - 0.5, cols - 0.5


def apply_spatial(image: np.ndarray, mask: np.ndarray, spatial: SpatialDraw) -> tuple[np.ndarray, np.ndarray]:
    """`image` and `mask` (H, W) through one map: crop and resize back (image bilinear, mask nearest, so it stays
    binary), then flip. ASSUMED: the official code resizes both with Lanczos and does not re-binarise the mask;
    bilinear / nearest on one coordinate map keeps image and mask aligned and the mask binary."""
    rows, cols = spatial_coordinates(*image.shape, spatial)
    moved = ndimage.map_coordinates(image.astype(np.float64), [rows, cols], order=1, mode="nearest")
    return _to_uint8(moved), ndimage.map_coordinates(mask, [rows, cols], order=0, mode="nearest")


@dataclass(frozen=True)
class PairedViews:
    """MI-SegNet's training sample: images float32 in [0, 1] (H, W), masks uint8 (H, W) in {0, 1}; x12 has the
    style of x1 and the anatomy (spatial transform) of x2, x21 the other way round."""

    x1: np.ndarray
    x2: np.ndarray
    x12: np.ndarray
    x21: np.ndarray
    y1: np.ndarray
    y2: np.ndarray


def style_difference(first: StyleDraw, second: StyleDraw) -> float:
    """The official resampling test's weighted difference of two styles."""
    on_1 = (first.active < STYLE_ACTIVE_FOR_DIFFERENCE) * first.alpha * STYLE_WEIGHTS
    on_2 = (second.active < STYLE_ACTIVE_FOR_DIFFERENCE) * second.alpha * STYLE_WEIGHTS
    return float(np.sum(np.abs(on_1 - on_2)))


def same_anchor(first: SpatialDraw, second: SpatialDraw) -> bool:
    """Whether the two draws pick the same crop anchor (the official test, whether or not either crops)."""
    return min(int(first.active[1] / 0.111), ANCHORS - 1) == min(int(second.active[1] / 0.111), ANCHORS - 1)


def augment(image: np.ndarray, mask: np.ndarray, style: StyleDraw, spatial: SpatialDraw,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spatial, then style (the official order): (image uint8, mask uint8)."""
    moved, moved_mask = apply_spatial(image, mask, spatial)
    return apply_style(moved, style, rng), moved_mask


def paired_views(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> PairedViews:
    """Two styles S1, S2 and two spatial transforms G1, G2, redrawn until the styles differ by at least 3 (weighted)
    or the crop anchors differ; x1 = S1 G1, x2 = S2 G2, x12 = S1 G2, x21 = S2 G1, y1 = G1 mask, y2 = G2 mask."""
    while True:
        style_1, spatial_1, style_2, spatial_2 = draw_style(rng), draw_spatial(rng), draw_style(rng), draw_spatial(rng)
        if style_difference(style_1, style_2) >= 3 or not same_anchor(spatial_1, spatial_2):
            break
    x1, y1 = augment(image, mask, style_1, spatial_1, rng)
    x2, y2 = augment(image, mask, style_2, spatial_2, rng)
    x12, _ = augment(image, mask, style_1, spatial_2, rng)
    x21, _ = augment(image, mask, style_2, spatial_1, rng)
    scaled = [view.astype(np.float32) / 255 for view in (x1, x2, x12, x21)]
    return PairedViews(*scaled, y1=y1, y2=y2)


# ----------------------------------------------------------------------------------------------- CLI

DEVICE_FIELDS = tuple(f.name for f in fields(DeviceParams))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m data.ultrasound build --out DIR ...`: the command of the DVC stage us_devices. Device parameters
    are `--<device>.<parameter> VALUE` (DVC unpacks params.yaml's device table into them). A bad parameter is one
    `error:` line and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m data.ultrasound", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="render USDevices (ultrasound.npz + meta.json)")
    build_cmd.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    build_cmd.add_argument("--train", type=int, required=True, help="source-device training images")
    build_cmd.add_argument("--val", type=int, required=True, help="source-device validation images")
    build_cmd.add_argument("--test", type=int, required=True, help="images per unseen (target) device")
    build_cmd.add_argument("--size", type=int, default=UltrasoundParams.size)
    build_cmd.add_argument("--depth-mm", type=float, default=UltrasoundParams.depth_mm)
    build_cmd.add_argument("--psf-scale", type=float, default=UltrasoundParams.psf_scale)
    build_cmd.add_argument("--severity", type=float, default=UltrasoundParams.severity)
    build_cmd.add_argument("--seed", type=int, default=0)
    for device in DEVICES:
        for name in DEVICE_FIELDS:
            build_cmd.add_argument(f"--{device}.{name}", type=float, default=getattr(DEFAULT_DEVICES[device], name))
    args = vars(parser.parse_args(argv))
    try:
        devices = {}
        for device in DEVICES:
            try:
                devices[device] = DeviceParams(**{name: args[f"{device}.{name}"] for name in DEVICE_FIELDS})
            except ValueError as exc:
                raise ValueError(f"device {device}: {exc}") from exc
        params = UltrasoundParams(size=args["size"], depth_mm=args["depth_mm"], psf_scale=args["psf_scale"],
                                  severity=args["severity"], devices=devices)
        counts = {"train": args["train"], "val": args["val"], **{f"test_{d}": args["test"] for d in TARGET_DEVICES}}
        out = build_ultrasound(args["out"], counts, params, args["seed"])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    built = load_ultrasound_dataset(out).meta["counts"]
    print("us_devices: " + " / ".join(f"{built[s]} {s}" for s in SPLITS) + f" images {args['size']}x{args['size']}"
          f" -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
