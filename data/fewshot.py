"""Few-shot (many-class) image datasets: classes split into disjoint base / val / novel sets, as FEAT needs.

A dataset directory holds two files:

* ``fewshot.npz``: ``x_base`` (N, H, W) uint8, ``y_base`` (N,) int64, and the same for ``val`` and ``novel``.
  Labels are global class ids: base classes come first, then val, then novel, and no class is in two splits;
* ``meta.json``: provenance (source package and version, fonts or character files, licence), the class names of
  every split, image shape, counts, and the builder parameters.

Roles (data/views.py): base classes are fit data (pre-training and meta-training), val classes are val (model
selection, every setting), novel classes are the test split (read by the evaluate step only).

Two sources render real character classes with per-sample jitter (this project's Omniglot analogue for FEAT's
miniature):

* ``glyphs`` (pip only): characters drawn from the fonts matplotlib ships (DejaVu Sans / Serif / Sans Mono and
  STIX General, 4 styles each = 16 real typefaces), Latin, Greek, Cyrillic, digits and symbols. Characters with
  a Unicode decomposition (accented forms) are left out, and so are characters whose reference rendering is
  nearly the same as one already kept (Latin A / Greek Alpha / Cyrillic A), so every class looks different.
  Instance = one of the 16 typefaces, random affine (rotation, scale, shear, shift), stroke-width jitter,
  optionally a random occlusion (a rectangle erased to background: blots / broken strokes) and pixel noise.
* ``hanzi`` (npm): the 9,574 Chinese characters of the npm package ``hanzi-writer-data`` (stroke outlines),
  rendered stroke by stroke with a small random affine per stroke ("different drawers") and a global affine.

Both are byte-for-byte reproducible from the same parameters and package versions. Pure numpy/Pillow code.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydantic import BaseModel, ConfigDict, Field

from data.dataset_dir import (
    DatasetFormatError, DatasetSourceMissingError, read_dataset_meta, write_dataset_dir,
)
from data.drift import ClassDriftBounds
from data.views import FIT, TEST, VAL, DatasetView, Withheld, as_view

FEWSHOT_FILE = "fewshot.npz"
SPLITS = ("base", "val", "novel")
SPLIT_ROLES = {"base": FIT, "val": VAL, "novel": TEST}
FORMAT_VERSION = 1
RENDER_SCALE = 4  # glyphs are drawn at 4x the output size, then downsampled (anti-aliasing)


@dataclass(frozen=True)
class FewShotDataset:
    """A built few-shot dataset as its view lets a step read it (arrays keep their stored dtype, so validation sees
    bad data as is). A split the view withholds maps to a `Withheld` stand-in: using it raises TestSplitAccessError."""

    x: dict[str, np.ndarray | Withheld]  # split -> (N, H, W)
    y: dict[str, np.ndarray | Withheld]  # split -> (N,) global class ids
    meta: dict[str, Any] = field(repr=False)

    def readable(self, split: str) -> bool:
        """Whether this step may read `split` (False: its arrays are withheld)."""
        return not isinstance(self.x[split], Withheld)

    def classes(self, split: str) -> np.ndarray:
        return np.unique(self.y[split])


class FewShotSuiteSpec(BaseModel):
    """What a paper config declares about its few-shot dataset; the `few_shot_classes` GX suite is built from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    dtype: str = "uint8"
    value_range: tuple[float, float] = (0.0, 255.0)
    classes_per_split: dict[str, int] = Field(description="split -> number of classes, e.g. base 64, val 16, novel 20")
    min_images_per_class: int = Field(20, ge=1, description="an N-way K-shot Q-query episode needs K + Q per class")
    ink_fraction: tuple[float, float] = Field((0.003, 0.6), description="share of pixels above a quarter grey per "
                                              "image: catches blank, missing-glyph and inverted renders")
    drift: ClassDriftBounds = ClassDriftBounds()


# ----------------------------------------------------------------------------------------- glyphs (pip)

GLYPH_FACES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
# Letters, digits, symbols and punctuation; spaces, format characters, modifiers and marks are not glyph classes.
_GLYPH_CATEGORIES = {"Lu", "Ll", "Lo", "Nd", "No", "So", "Sm", "Sc", "Po", "Ps", "Pe", "Pd", "Pi", "Pf"}


@dataclass(frozen=True)
class GlyphJitter:
    """Per-instance variation of a rendered glyph (our miniature's: rotation ±15°, scale 0.9-1.1, shift,
    stroke-width jitter, noise), plus an optional occlusion that makes single instances unreliable prototypes
    (its probability is datasets.glyphs.occlusion in params.yaml)."""

    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 0.15
    shift: float = 0.08  # fraction of the image side
    stroke: tuple[int, ...] = (-1, 0, 0, 1, 2)  # erode / keep / dilate steps at the render scale (3x3 each)
    noise_std: float = 12.0  # grey levels
    occlusion: float = 0.0  # probability of one random rectangle erased to background (a blot / broken strokes)
    occlusion_side: tuple[float, float] = (0.25, 0.5)  # its sides, as fractions of the image side
    occlusion_keep: float = 0.5  # an occlusion is skipped when it would leave less than this share of the ink


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _font_charset(path: Path) -> set[int]:
    from fontTools.ttLib import TTFont

    return set(TTFont(str(path), lazy=True).getBestCmap())


def _affine(rng: np.random.Generator, jitter: GlyphJitter, size: int) -> tuple[float, ...]:
    """Coefficients (a, b, c, d, e, f) of PIL's inverse affine map for a random rotation/scale/shear/shift about
    the image centre."""
    angle = np.deg2rad(rng.uniform(-jitter.rotation_deg, jitter.rotation_deg))
    scale = rng.uniform(*jitter.scale)
    shear = rng.uniform(-jitter.shear, jitter.shear)
    forward = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ \
        np.array([[1.0, shear], [0.0, 1.0]]) * scale
    inverse = np.linalg.inv(forward)
    shift = rng.uniform(-jitter.shift, jitter.shift, 2) * size
    centre = np.array([size / 2, size / 2])
    offset = centre - inverse @ (centre + shift)
    return (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])


def occlude(pixels: np.ndarray, rng: np.random.Generator, probability: float,
            side: tuple[float, float] = GlyphJitter.occlusion_side,
            keep: float = GlyphJitter.occlusion_keep) -> np.ndarray:
    """(size, size) float pixels, with `probability` one random rectangle (each side a `side` fraction of the image)
    erased to background. The occlusion is skipped when it would leave less than `keep` of the ink, so a small
    character (".", "'", 丷) never vanishes."""
    if probability <= 0 or rng.random() >= probability:
        return pixels
    size = pixels.shape[0]
    h, w = (np.rint(rng.uniform(*side, 2) * size)).astype(int)
    top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    occluded = pixels.copy()
    occluded[top : top + h, left : left + w] = 0.0
    return occluded if occluded.sum() >= keep * pixels.sum() else pixels


def render_glyph(char: str, font: ImageFont.FreeTypeFont, size: int, rng: np.random.Generator | None,
                 jitter: GlyphJitter = GlyphJitter()) -> np.ndarray:
    """One (size, size) uint8 image of `char`, white on black; rng None = the clean reference rendering.

    The glyph is anchored at the font's vertical middle (anchor "mm"), not scaled to its own box, so case and
    size differences between characters (o / O, comma / apostrophe) survive.
    """
    big = size * RENDER_SCALE
    image = Image.new("L", (big, big), 0)
    ImageDraw.Draw(image).text((big / 2, big / 2), char, fill=255, font=font, anchor="mm")
    if rng is not None:
        image = image.transform((big, big), Image.Transform.AFFINE, _affine(rng, jitter, big),
                                resample=Image.Resampling.BILINEAR)
        steps = int(rng.choice(jitter.stroke))
        for _ in range(abs(steps)):
            image = image.filter(ImageFilter.MaxFilter(3) if steps > 0 else ImageFilter.MinFilter(3))
    pixels = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    if rng is not None:
        pixels = occlude(pixels, rng, jitter.occlusion, jitter.occlusion_side, jitter.occlusion_keep)
    if rng is not None and jitter.noise_std > 0:
        pixels = pixels + rng.normal(0.0, jitter.noise_std, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def glyph_classes(size: int, max_similarity: float = 0.85, min_ink: float = 0.04) -> list[str]:
    """Every character all GLYPH_FACES draw that is a distinct glyph class, in code-point order.

    Kept: letters/digits/symbols without a Unicode decomposition, whose reference rendering (DejaVu Sans) has at
    least `min_ink` of its pixels inked and a cosine similarity <= `max_similarity` to every character kept
    before it (so Latin A, Greek Alpha and Cyrillic A make one class, not three).
    """
    font_dir = _font_dir()
    charset = set.intersection(*(_font_charset(font_dir / face) for face in GLYPH_FACES))
    reference_font = ImageFont.truetype(str(font_dir / GLYPH_FACES[0]), size=int(size * RENDER_SCALE * 0.7))
    kept: list[str] = []
    kept_vectors: list[np.ndarray] = []
    for code in sorted(charset):
        char = chr(code)
        if unicodedata.category(char) not in _GLYPH_CATEGORIES or unicodedata.decomposition(char) \
                or 0x2500 <= code <= 0x259F:  # box-drawing and block elements fill the cell: not characters
            continue
        pixels = render_glyph(char, reference_font, size, None).astype(np.float32) / 255.0
        if (pixels > 0.5).mean() < min_ink:
            continue
        vector = (pixels / np.linalg.norm(pixels)).ravel()
        if kept_vectors and float(np.max(np.stack(kept_vectors) @ vector)) > max_similarity:
            continue
        kept.append(char)
        kept_vectors.append(vector)
    return kept


def _split_classes(n_total: int, classes_per_split: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint random class indices per split (base, val, novel), each sorted."""
    wanted = sum(classes_per_split[s] for s in SPLITS)
    if wanted > n_total:
        raise ValueError(f"{wanted} classes asked for ({classes_per_split}) but the source has {n_total}")
    order = np.random.default_rng(seed).permutation(n_total)[:wanted]
    out, start = {}, 0
    for split in SPLITS:
        out[split] = np.sort(order[start : start + classes_per_split[split]])
        start += classes_per_split[split]
    return out


def build_glyphs(out_dir: str | Path, classes_per_split: dict[str, int], images_per_class: int, size: int = 32,
                 seed: int = 0, jitter: GlyphJitter = GlyphJitter()) -> Path:
    """Render `images_per_class` jittered instances of each chosen character class into `out_dir`."""
    font_dir = _font_dir()
    chars = glyph_classes(size)
    chosen = _split_classes(len(chars), classes_per_split, seed)
    fonts = [ImageFont.truetype(str(font_dir / face), size=int(size * RENDER_SCALE * 0.7)) for face in GLYPH_FACES]
    names = {split: [chars[i] for i in chosen[split]] for split in SPLITS}

    def instances(class_id: int, char: str) -> np.ndarray:
        # One generator per class: a class renders the same whatever the other classes are.
        rng = np.random.default_rng([seed, class_id, ord(char)])
        return np.stack([render_glyph(char, fonts[int(rng.integers(len(fonts)))], size, rng, jitter)
                         for _ in range(images_per_class)])

    meta_source = {"package": "matplotlib", "version": importlib.metadata.version("matplotlib"),
                   "loader": "data.fewshot.build_glyphs", "fonts": ", ".join(GLYPH_FACES),
                   "candidate_classes": str(len(chars))}
    licence = "DejaVu fonts: Bitstream Vera / DejaVu licence (free); STIX fonts: SIL Open Font License 1.1"
    params = {"images_per_class": images_per_class, "size": size, "seed": seed,
              "classes_per_split": dict(classes_per_split), "jitter": jitter.__dict__ | {}}
    return _write(out_dir, "glyphs", names, instances, meta_source, licence, params, size)


# ------------------------------------------------------------------------------------------- hanzi (npm)

HANZI_PACKAGE = "hanzi-writer-data"
HANZI_VERSION = "2.0.1"
HANZI_ROOT_ENV = "PAPEROPS_HANZI_ROOT"
HANZI_DEFAULT_ROOT = Path("data/.cache") / f"{HANZI_PACKAGE}-{HANZI_VERSION}" / "package"
_PATH_TOKENS = re.compile(r"[MLQCZ]|-?\d+(?:\.\d+)?")


def hanzi_install_command(cache: Path = HANZI_DEFAULT_ROOT.parent) -> str:
    return (f"mkdir -p {cache} && npm pack {HANZI_PACKAGE}@{HANZI_VERSION} --pack-destination {cache} && "
            f"tar xzf {cache}/{HANZI_PACKAGE}-{HANZI_VERSION}.tgz -C {cache}")


def hanzi_root(fetch: bool = True) -> Path:
    """The unpacked npm package (`<root>/<char>.json` files): $PAPEROPS_HANZI_ROOT, else data/.cache/..., fetched
    there with `npm pack` when npm is installed. Raises DatasetSourceMissingError naming the command otherwise."""
    if os.environ.get(HANZI_ROOT_ENV):
        root = Path(os.environ[HANZI_ROOT_ENV])
        if not any(root.glob("*.json")):
            raise DatasetSourceMissingError(f"{HANZI_ROOT_ENV}={root} holds no <character>.json files of the npm "
                                            f"package {HANZI_PACKAGE}@{HANZI_VERSION}")
        return root
    root = HANZI_DEFAULT_ROOT
    if any(root.glob("*.json")):
        return root
    npm = shutil.which("npm")
    if npm is None or not fetch:
        raise DatasetSourceMissingError(
            f"the hanzi dataset needs the npm package {HANZI_PACKAGE}@{HANZI_VERSION} (stroke data of 9,574 "
            f"characters), not found at {root}{' and npm is not installed' if npm is None else ''}. Install "
            f"Node.js/npm (e.g. `apt-get install -y npm`), then run `{hanzi_install_command()}`, or unpack the "
            f"package anywhere and set {HANZI_ROOT_ENV}=<dir>/package.")
    cache = root.parent
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "pack", f"{HANZI_PACKAGE}@{HANZI_VERSION}", "--pack-destination", str(cache)],
                          capture_output=True, text=True)
    tarball = cache / f"{HANZI_PACKAGE}-{HANZI_VERSION}.tgz"
    if done.returncode != 0 or not tarball.is_file():
        raise DatasetSourceMissingError(f"`npm pack {HANZI_PACKAGE}@{HANZI_VERSION}` failed ({done.returncode}): "
                                        f"{done.stderr.strip()[-500:]}. Run `{hanzi_install_command()}` by hand.")
    with tarfile.open(tarball) as archive:
        archive.extractall(cache, filter="data")
    return root


def _stroke_polygons(path: str, steps: int = 6) -> list[np.ndarray]:
    """SVG outline (M, L, Q, C, Z commands, absolute coordinates) -> polygons (P, 2) with curves flattened."""
    tokens = _PATH_TOKENS.findall(path)
    polygons: list[np.ndarray] = []
    points: list[np.ndarray] = []
    current = np.zeros(2)
    i = 0

    def take(n: int) -> list[np.ndarray]:
        nonlocal i
        values = [np.array([float(tokens[i + 2 * k]), float(tokens[i + 2 * k + 1])]) for k in range(n)]
        i += 2 * n
        return values

    ts = np.linspace(0.0, 1.0, steps)[1:, None]
    while i < len(tokens):
        command = tokens[i]
        i += 1
        if command == "M":
            if len(points) > 2:
                polygons.append(np.stack(points))
            (current,) = take(1)
            points = [current]
        elif command == "L":
            (current,) = take(1)
            points.append(current)
        elif command == "Q":
            control, end = take(2)
            points.extend((1 - ts) ** 2 * current + 2 * (1 - ts) * ts * control + ts**2 * end)
            current = end
        elif command == "C":
            c1, c2, end = take(3)
            points.extend((1 - ts) ** 3 * current + 3 * (1 - ts) ** 2 * ts * c1 + 3 * (1 - ts) * ts**2 * c2
                          + ts**3 * end)
            current = end
        elif command == "Z":
            if len(points) > 2:
                polygons.append(np.stack(points))
            points = []
        else:  # a number where a command was expected: the path uses a command this parser does not know
            raise DatasetFormatError(f"unsupported SVG path token {command!r}")
    if len(points) > 2:
        polygons.append(np.stack(points))
    return polygons


def render_hanzi(strokes: list[str], size: int, rng: np.random.Generator | None,
                 stroke_jitter: float = 0.05, stroke_shift: float = 25.0, noise_std: float = 8.0,
                 occlusion: float = 0.0) -> np.ndarray:
    """One (size, size) uint8 image of a character from its stroke outlines (1024 box, y up, baseline 900), with
    the glyphs' occlusion (`occlude`) at probability `occlusion`."""
    big = size * RENDER_SCALE
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    if rng is not None:
        global_a = np.eye(2) * rng.uniform(0.85, 1.0) + rng.normal(0, 0.05, (2, 2))
        global_shift = rng.normal(0, 30, 2)
    else:
        global_a, global_shift = np.eye(2) * 0.92, np.zeros(2)
    for stroke in strokes:
        a = np.eye(2) + (rng.normal(0, stroke_jitter, (2, 2)) if rng is not None else 0)
        shift = rng.normal(0, stroke_shift, 2) if rng is not None else np.zeros(2)
        for polygon in _stroke_polygons(stroke):
            p = ((polygon - 512) @ a.T + shift) @ global_a.T + 512 + global_shift
            p[:, 1] = 900 - p[:, 1]
            draw.polygon([tuple(q) for q in p * big / 1024], fill=255)
    pixels = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    if rng is not None:
        pixels = occlude(pixels, rng, occlusion)
    if rng is not None and noise_std > 0:
        pixels = pixels + rng.normal(0.0, noise_std, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def build_hanzi(out_dir: str | Path, classes_per_split: dict[str, int], images_per_class: int, size: int = 32,
                seed: int = 0, occlusion: float = 0.0) -> Path:
    root = hanzi_root()
    files = sorted(p for p in root.glob("*.json") if len(p.stem) == 1)
    chosen = _split_classes(len(files), classes_per_split, seed)
    names = {split: [files[i].stem for i in chosen[split]] for split in SPLITS}

    def instances(class_id: int, char: str) -> np.ndarray:
        strokes = json.loads((root / f"{char}.json").read_text(encoding="utf-8"))["strokes"]
        rng = np.random.default_rng([seed, class_id, ord(char)])
        return np.stack([render_hanzi(strokes, size, rng, occlusion=occlusion) for _ in range(images_per_class)])

    source = {"package": f"npm:{HANZI_PACKAGE}", "version": HANZI_VERSION, "loader": str(root),
              "candidate_classes": str(len(files))}
    licence = "hanzi-writer-data (Make Me a Hanzi, Arphic fonts): Arphic Public License"
    params = {"images_per_class": images_per_class, "size": size, "seed": seed,
              "classes_per_split": dict(classes_per_split), "occlusion": occlusion}
    return _write(out_dir, "hanzi", names, instances, source, licence, params, size)


# --------------------------------------------------------------------------------------------- writing


def _write(out_dir: str | Path, name: str, names: dict[str, list[str]], instances: Any, source: dict[str, str],
           licence: str, params: dict[str, Any], size: int) -> Path:
    arrays: dict[str, np.ndarray] = {}
    class_id = 0
    class_names: dict[str, list[str]] = {}
    for split in SPLITS:
        xs, ys = [], []
        for char in names[split]:
            images = instances(class_id, char)
            xs.append(images)
            ys.append(np.full(len(images), class_id, dtype=np.int64))
            class_id += 1
        arrays[f"x_{split}"] = np.concatenate(xs)
        arrays[f"y_{split}"] = np.concatenate(ys)
        class_names[split] = names[split]
    meta = {
        "format_version": FORMAT_VERSION, "name": name, "kind": "few_shot", "source": source, "licence": licence,
        "class_names": class_names,
        "class_codepoints": {s: [f"U+{ord(c):04X}" for c in names[s]] for s in SPLITS},
        "classes_per_split": {s: len(names[s]) for s in SPLITS},
        "counts": {s: int(len(arrays[f"y_{s}"])) for s in SPLITS},
        "image_shape": [size, size], "dtype": "uint8", "params": params,
    }
    return write_dataset_dir(Path(out_dir), meta,
                             lambda staging: np.savez(staging / FEWSHOT_FILE, allow_pickle=False, **arrays))


def image_digests(images: np.ndarray) -> list[str]:
    flat = np.ascontiguousarray(images).reshape(len(images), int(np.prod(images.shape[1:])))  # N may be 0
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in flat]


def load_fewshot_dataset(source: str | Path | DatasetView) -> FewShotDataset:
    """Load a directory written by build_glyphs / build_hanzi (a path: every split; a view: the splits its step may
    read, the others withheld); errors name the file and what is wrong."""
    view = as_view(source)
    root = view.path
    meta = read_dataset_meta(root, (FEWSHOT_FILE,))
    archive_path = root / FEWSHOT_FILE
    readable = [split for split in SPLITS if view.take(split, SPLIT_ROLES[split])]
    wanted = [f"{p}_{s}" for s in readable for p in ("x", "y")]
    try:
        with np.load(archive_path, allow_pickle=False) as archive:  # lazy: a withheld split is never read
            found = list(archive.files)
            arrays: dict[str, Any] = {key: archive[key] for key in wanted if key in found}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise DatasetFormatError(f"{archive_path} is not a readable .npz archive: {exc}") from exc
    missing = [key for key in wanted if key not in arrays]
    if missing:
        raise DatasetFormatError(f"{archive_path} lacks array(s) {', '.join(missing)} (found: {', '.join(found)})")
    for split in readable:
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DatasetFormatError(f"{archive_path}: x_{split} has {len(arrays[f'x_{split}'])} images but "
                                     f"y_{split} {len(arrays[f'y_{split}'])} labels")
    for split in SPLITS:
        if split not in readable:
            arrays[f"x_{split}"] = arrays[f"y_{split}"] = view.withheld(split)
    return FewShotDataset(x={s: arrays[f"x_{s}"] for s in SPLITS}, y={s: arrays[f"y_{s}"] for s in SPLITS},
                          meta=meta)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m data.fewshot build {glyphs,hanzi} --out DIR ...`: the command DVC stages run."""
    parser = argparse.ArgumentParser(prog="python -m data.fewshot", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="render a few-shot dataset (fewshot.npz + meta.json)")
    build_cmd.add_argument("name", choices=["glyphs", "hanzi"])
    build_cmd.add_argument("--out", required=True)
    build_cmd.add_argument("--classes", required=True, help="base,val,novel class counts, e.g. 64,16,20")
    build_cmd.add_argument("--images-per-class", type=int, required=True)
    build_cmd.add_argument("--size", type=int, default=32)
    build_cmd.add_argument("--seed", type=int, default=0)
    build_cmd.add_argument("--occlusion", type=float, default=0.0,
                           help="probability that an instance has one random rectangle erased (a blot)")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.classes.split(",")]
    if len(counts) != 3:
        parser.error("--classes needs three counts: base,val,novel")
    classes_per_split = dict(zip(SPLITS, counts, strict=True))
    try:
        if args.name == "glyphs":
            out = build_glyphs(args.out, classes_per_split, args.images_per_class, args.size, args.seed,
                               GlyphJitter(occlusion=args.occlusion))
        else:
            out = build_hanzi(args.out, classes_per_split, args.images_per_class, args.size, args.seed,
                              args.occlusion)
    except DatasetSourceMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = load_fewshot_dataset(out).meta
    print(f"{args.name}: " + ", ".join(f"{s} {meta['classes_per_split'][s]} classes / {meta['counts'][s]} images"
                                       for s in SPLITS) + f" -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
