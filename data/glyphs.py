"""Real character glyphs rendered from the DejaVu fonts that matplotlib ships: a many-class image set with no
download, used to pre-train the frozen ViT of class-incremental recipes on classes disjoint from their stream.

Classes are Latin, Greek and Cyrillic letters (digits are excluded, so a digit stream stays disjoint). A letter
whose glyph is pixel-identical in DejaVu Sans to an earlier class (Latin A / Greek Alpha / Cyrillic A) is dropped,
so no two classes share a drawing. Each image draws its class in a random DejaVu face (12 faces: Sans, Serif,
Sans Mono x regular/bold/oblique/bold-oblique) with a random affine (rotation, scale, shear, shift) and a random
stroke width, rendered at 4x and downsampled: white on black, uint8, like MNIST.

Pure numpy/Pillow/matplotlib; deterministic for a seed and the matplotlib version (recorded by `glyph_source`).

`build_letters` stores such a set as an image-classification dataset directory (data/images.py's layout: a train,
a val and a test split of every class, checked by the image_classification suite); the DVC stage ``dejavu_letters``
runs it: ``python -m data.glyphs build --out data/dejavu_letters --classes 50 --per-class 120 ...``. The set only
feeds OVOR's backbone pre-training, whose choices (and the glyph top-1 it logs) read val; test is read by no step
today and stays untouched, so an evaluate step can report the backbone's letter accuracy honestly.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from data.dataset_dir import write_dataset_dir
from data.images import FORMAT_VERSION, IMAGES_FILE, load_image_dataset

DEJAVU_FACES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
)
_LATIN = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
_GREEK = [chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2] + [chr(c) for c in range(0x3B1, 0x3CA) if c != 0x3C2]
_CYRILLIC = [chr(c) for c in range(0x410, 0x450)]
CANDIDATES = tuple(_LATIN + _GREEK + _CYRILLIC)


@dataclass(frozen=True)
class GlyphSet:
    images: np.ndarray  # (N, S, S) uint8, white glyph on black
    labels: np.ndarray  # (N,) int64 in 0..K-1
    characters: tuple[str, ...]  # class k draws characters[k]


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def glyph_source() -> dict[str, str]:
    """Where the glyphs come from: package, version and a digest of the font files used."""
    digest = hashlib.sha256()
    for face in DEJAVU_FACES:
        digest.update((font_dir() / face).read_bytes())
    return {"package": "matplotlib", "version": importlib.metadata.version("matplotlib"),
            "fonts": ",".join(DEJAVU_FACES), "fonts_sha256": digest.hexdigest()}


@lru_cache(maxsize=64)
def _font(face: str, px: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_dir() / face), px)


def _render(char: str, face: str, size: int, angle: float = 0.0, scale: float = 1.0, shear: float = 0.0,
            shift: tuple[float, float] = (0.0, 0.0), stroke: int = 0, oversample: int = 4) -> np.ndarray:
    from PIL import Image, ImageDraw

    S = size * oversample
    canvas = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((S / 2, S / 2), char, fill=255, font=_font(face, int(0.72 * S)), anchor="mm",
              stroke_width=stroke, stroke_fill=255)
    # Inverse affine about the centre (PIL maps output -> input coordinates).
    a = np.deg2rad(angle)
    forward = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
    inv = np.linalg.inv(forward)
    c = np.array([S / 2, S / 2])
    offset = c - inv @ (c + np.asarray(shift) * oversample)
    canvas = canvas.transform((S, S), Image.AFFINE, (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1]),
                              resample=Image.BILINEAR)
    return np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def distinct_characters(size: int = 28) -> tuple[str, ...]:
    """CANDIDATES minus every glyph that is pixel-identical (DejaVu Sans, no jitter) to an earlier one."""
    seen: set[bytes] = set()
    kept = []
    for char in CANDIDATES:
        key = _render(char, DEJAVU_FACES[0], size).tobytes()
        if key in seen:
            continue
        seen.add(key)
        kept.append(char)
    return tuple(kept)


def render_glyphs(num_classes: int, per_class: int, size: int = 28, seed: int = 0) -> GlyphSet:
    """`per_class` jittered renders of each of the first `num_classes` distinct characters."""
    chars = distinct_characters(size)
    if not 1 <= num_classes <= len(chars):
        raise ValueError(f"num_classes must lie in 1..{len(chars)} (distinct DejaVu letters), got {num_classes}")
    chars = chars[:num_classes]
    rng = np.random.default_rng(seed)
    images = np.empty((num_classes * per_class, size, size), dtype=np.uint8)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    for i, k in enumerate(labels):
        images[i] = _render(
            chars[k], DEJAVU_FACES[rng.integers(len(DEJAVU_FACES))], size,
            angle=rng.uniform(-15, 15), scale=rng.uniform(0.75, 1.1), shear=rng.uniform(-0.25, 0.25),
            shift=tuple(rng.uniform(-2.5, 2.5, 2)), stroke=int(rng.integers(0, 3)),
        )
    return GlyphSet(images=images, labels=labels, characters=chars)


def build_letters(out_dir: str | Path, num_classes: int, per_class: int, val_per_class: int, test_per_class: int,
                  size: int = 28, seed: int = 0) -> Path:
    """`per_class + val_per_class + test_per_class` renders of each of the first `num_classes` distinct letters
    (`render_glyphs`): of every class's renders the first `per_class` go to train, the next `val_per_class` to val and
    the rest to test, each split in render order."""
    if min(per_class, val_per_class, test_per_class) < 1:
        raise ValueError(f"per_class, val_per_class and test_per_class must be >= 1, got {per_class}, "
                         f"{val_per_class} and {test_per_class}")
    renders = per_class + val_per_class + test_per_class
    glyphs = render_glyphs(num_classes, renders, size, seed)
    rank = np.arange(len(glyphs.labels)) % renders  # a render's place among its class's renders
    members = {"train": rank < per_class, "val": (rank >= per_class) & (rank < per_class + val_per_class),
               "test": rank >= per_class + val_per_class}
    arrays = {f"{kind}_{split}": (glyphs.images if kind == "x" else glyphs.labels)[mask]
              for split, mask in members.items() for kind in ("x", "y")}
    classes = list(range(num_classes))
    per_split = {"train": per_class, "val": val_per_class, "test": test_per_class}
    meta = {
        "format_version": FORMAT_VERSION,
        "name": "dejavu_letters",
        "source": glyph_source(),
        "licence": "DejaVu fonts: Bitstream Vera / DejaVu licence (free)",
        "classes": classes,
        "class_names": list(glyphs.characters),
        "image_shape": [size, size],
        "dtype": "uint8",
        "counts": {split: int(mask.sum()) for split, mask in members.items()},
        "class_counts": {split: {str(c): n for c in classes} for split, n in per_split.items()},
        "params": {"num_classes": num_classes, "per_class": per_class, "val_per_class": val_per_class,
                   "test_per_class": test_per_class, "size": size, "seed": seed},
    }
    # np.savez stores members uncompressed with a fixed date: the directory's md5 only changes with the renders.
    return write_dataset_dir(Path(out_dir), meta,
                             lambda staging: np.savez(staging / IMAGES_FILE, allow_pickle=False, **arrays))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m data.glyphs build --out DIR --classes K --per-class N --val-per-class V --test-per-class M --size S
    --seed R`."""
    parser = argparse.ArgumentParser(prog="python -m data.glyphs", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="render letters into an image dataset (images.npz + meta.json)")
    build_cmd.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    build_cmd.add_argument("--classes", type=int, required=True, help="distinct letters (classes)")
    build_cmd.add_argument("--per-class", type=int, required=True, help="train renders per class")
    build_cmd.add_argument("--val-per-class", type=int, required=True, help="val renders per class")
    build_cmd.add_argument("--test-per-class", type=int, required=True, help="test renders per class")
    build_cmd.add_argument("--size", type=int, default=28)
    build_cmd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = build_letters(args.out, args.classes, args.per_class, args.val_per_class, args.test_per_class, args.size,
                            args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = load_image_dataset(out).meta
    print(f"dejavu_letters: {meta['counts']['train']} train / {meta['counts']['val']} val / {meta['counts']['test']} "
          f"test images of "
          f"{len(meta['classes'])} letters, {args.size}x{args.size} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
