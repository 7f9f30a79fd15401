"""ShapesMT (data/scenes.py): the renderer is deterministic for a seed and its labels agree with its geometry
(normals are the height field's gradient, saliency is the largest object, parts lie inside their figure); the ood
split differs as declared; the loader withholds test and ood outside evaluate; the proxy set is an
image-classification dataset; the contact sheet shows every field; and the built data passes its suite."""
from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import json
from pathlib import Path

import numpy as np
import pytest

from data import ImageSuiteSpec, load_image_dataset
from data.dense_suite import DENSE_MULTITASK
from data.images_suite import IMAGE_CLASSIFICATION
from data.scenes import (
    FIELDS, FIGURE, PARTS_CLASSES, SCENE_SPLITS, SEMSEG_CLASSES, TEXTURES, UNSEEN_TEXTURES, DenseSuiteSpec,
    SceneParams, build_proxy, build_scenes, contact_sheet, draw_scene, load_scene_dataset, main, proxy_classes,
)
from data.views import FIT, VAL, TestSplitAccessError, step_views
from tasks.validate import validate_dataset

COUNTS = {"train": 24, "val": 8, "test": 8, "ood": 8}
SPEC = DenseSuiteSpec(height=64, width=64, semseg_classes=len(SEMSEG_CLASSES), parts_classes=len(PARTS_CLASSES),
                      parts_of=FIGURE, min_scenes_per_split=8)


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_scenes(tmp_path_factory.mktemp("data") / "shapes_mt", COUNTS, SceneParams(), seed=0)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_scenes(scenes_dir: Path, tmp_path: Path) -> None:
    again = build_scenes(tmp_path / "again", COUNTS, SceneParams(), seed=0)
    for name in ("scenes.npz", "meta.json"):
        assert (again / name).read_bytes() == (scenes_dir / name).read_bytes()
    other = build_scenes(tmp_path / "other", COUNTS, SceneParams(), seed=1)
    assert not np.array_equal(load_scene_dataset(other).train.image, load_scene_dataset(scenes_dir).train.image)


def test_a_scene_depends_only_on_seed_split_and_index(scenes_dir: Path, tmp_path: Path) -> None:
    larger = build_scenes(tmp_path / "larger", COUNTS | {"train": 40}, SceneParams(), seed=0)
    small, big = load_scene_dataset(scenes_dir), load_scene_dataset(larger)
    assert np.array_equal(big.train.image[:24], small.train.image)
    assert all(np.array_equal(getattr(big.val, name), getattr(small.val, name)) for name in FIELDS)


def test_fields_have_the_documented_shapes_dtypes_and_values(scenes_dir: Path) -> None:
    dataset = load_scene_dataset(scenes_dir)
    split = dataset.train
    assert split.image.shape == (24, 64, 64, 3) and split.image.dtype == np.uint8
    assert split.normals.shape == (24, 64, 64, 3) and split.normals.dtype == np.float32
    assert set(np.unique(split.semseg)) == set(range(len(SEMSEG_CLASSES)))
    assert set(np.unique(split.parts)) == set(range(len(PARTS_CLASSES)))
    assert set(np.unique(split.saliency)) == {0, 1}
    length = np.linalg.norm(split.normals, axis=-1)
    invalid = np.all(split.normals == 0, axis=-1)
    assert np.allclose(length[~invalid], 1.0, atol=1e-5) and 0.02 < invalid.mean() < 0.3
    assert dataset.meta["semseg_classes"] == list(SEMSEG_CLASSES) and dataset.meta["counts"] == COUNTS
    assert dataset.meta["height"] == dataset.meta["width"] == 64 and dataset.meta["seed"] == 0
    assert dataset.meta["params"]["max_objects"] == 4 and dataset.meta["params"]["ood_kind"] == "texture"


def _single_surface(surface_id: np.ndarray) -> np.ndarray:
    """Pixels whose 3 x 3 neighbourhood shows one surface only (a central difference there stays on it)."""
    padded = np.pad(surface_id, 1, mode="edge")
    side_y, side_x = surface_id.shape
    return np.all([padded[dy:dy + side_y, dx:dx + side_x] == surface_id for dy in range(3) for dx in range(3)], axis=0)


def _angles_to_height_gradient(normals: np.ndarray, scene) -> np.ndarray:
    """Degrees between `normals` and the normals of the scene's height field by central differences, on the object
    pixels whose neighbourhood is one surface and whose stored normal is valid."""
    d_row, d_col = np.gradient(scene.height)
    measured = np.stack([-d_col, -d_row, np.ones_like(d_col)], axis=-1)
    measured /= np.linalg.norm(measured, axis=-1, keepdims=True)
    where = (_single_surface(scene.instances * len(PARTS_CLASSES) + scene.parts) & (scene.instances > 0)
             & np.any(scene.normals != 0, axis=-1))
    return np.degrees(np.arccos(np.clip(np.sum(measured * normals, axis=-1), -1.0, 1.0)))[where]


def test_normals_are_the_height_fields_gradient() -> None:
    scenes = [draw_scene(0, "train", index, SceneParams()) for index in range(12)]
    errors = np.concatenate([_angles_to_height_gradient(scene.normals, scene) for scene in scenes])
    object_pixels = sum(int(np.count_nonzero(scene.instances)) for scene in scenes)
    assert len(errors) > 0.5 * object_pixels  # most of every object is compared, not a few flat pixels
    # Central differences agree to a fraction of a degree except beside a pyramid's ridges.
    assert np.median(errors) < 0.2 and np.percentile(errors, 90) < 1.0
    flipped = [scene.normals * np.array([1.0, -1.0, 1.0], np.float32) for scene in scenes]  # y axis up instead
    wrong = np.concatenate([_angles_to_height_gradient(normals, scene) for normals, scene in zip(flipped, scenes)])
    assert np.median(wrong) > 10.0
    floor = np.concatenate([scene.normals[(scene.instances == 0) & np.any(scene.normals != 0, axis=-1)]
                            for scene in scenes])
    assert np.array_equal(floor, np.tile(np.float32([0, 0, 1]), (len(floor), 1)))


def test_normals_are_invalid_exactly_at_steps_between_surfaces() -> None:
    scene = draw_scene(0, "val", 3, SceneParams())
    surface_id = scene.instances * len(PARTS_CLASSES) + scene.parts
    invalid = np.all(scene.normals == 0, axis=-1)
    padded = np.pad(surface_id, 1, mode="edge")
    four_neighbours = [padded[1:-1, :-2], padded[1:-1, 2:], padded[:-2, 1:-1], padded[2:, 1:-1]]
    assert np.array_equal(invalid, np.any([n != surface_id for n in four_neighbours], axis=0))


def test_saliency_is_the_largest_visible_object() -> None:
    for index in range(20):
        scene = draw_scene(0, "train", index, SceneParams())
        visible = np.bincount(scene.instances.ravel(), minlength=len(scene.objects) + 1)[1:]
        chosen = np.unique(scene.instances[scene.saliency == 1])
        assert len(chosen) == 1 and chosen[0] > 0  # one object, never the floor
        assert np.array_equal(scene.saliency == 1, scene.instances == chosen[0])  # all of it
        assert visible[chosen[0] - 1] == visible.max()


def test_parts_cover_exactly_the_figures(scenes_dir: Path) -> None:
    dataset = load_scene_dataset(scenes_dir)
    for split in SCENE_SPLITS:
        scenes = dataset.split(split)
        assert np.array_equal(scenes.parts > 0, scenes.semseg == FIGURE), split
    figure = next(scene for scene in (draw_scene(0, "train", i, SceneParams()) for i in range(50))
                  if np.any(scene.semseg == FIGURE))
    for instance in np.unique(figure.instances[figure.semseg == FIGURE]):
        rows = {part: np.nonzero((figure.instances == instance) & (figure.parts == part))[0]
                for part in range(1, len(PARTS_CLASSES))}
        present = {part: r for part, r in rows.items() if len(r)}
        # Upright: whatever is visible of the head lies above the torso, the torso above the legs.
        if 1 in present and 2 in present:
            assert present[1].min() < present[2].min()
        if 2 in present and 3 in present:
            assert present[2].max() < present[3].max()


@pytest.mark.parametrize("kind", ["texture", "crowded"])
def test_the_ood_split_differs_as_declared(kind: str) -> None:
    params = SceneParams(ood_kind=kind)
    for split in SCENE_SPLITS:
        scenes = [draw_scene(0, split, index, params) for index in range(15)]
        textures = {texture for scene in scenes for _, texture in scene.objects} | {s.floor_texture for s in scenes}
        counts = {len(scene.objects) for scene in scenes}
        ood = split == "ood"
        assert textures <= set(UNSEEN_TEXTURES if ood and kind == "texture" else TEXTURES), (split, textures)
        low, high = (5, 7) if ood and kind == "crowded" else (2, 4)
        assert low <= min(counts) and max(counts) <= high, (split, counts)


def test_train_and_compress_read_fit_and_val_only(scenes_dir: Path) -> None:
    for step in ("train", "compress"):
        view = step_views({"data": scenes_dir}, step)["data"]
        dataset = load_scene_dataset(view)
        assert dataset.readable("train") and dataset.readable("val")
        assert not dataset.readable("test") and not dataset.readable("ood")
        with pytest.raises(TestSplitAccessError, match="split 'ood' of dataset 'data' is withheld from the"):
            dataset.ood.image  # noqa: B018
        with pytest.raises(TestSplitAccessError, match="split 'test'"):
            len(dataset.test)
        assert view.roles_read() == {FIT, VAL}
    evaluate = step_views({"data": scenes_dir}, "evaluate")["data"]
    assert all(load_scene_dataset(evaluate).readable(split) for split in SCENE_SPLITS)


def test_the_built_scenes_pass_their_suite(scenes_dir: Path, tmp_path: Path) -> None:
    report = validate_dataset(DENSE_MULTITASK, scenes_dir, SPEC)
    assert report.success, report.failed
    assert {(row["split"], row["label"]) for row in report.profile["rows"]} == {
        (split, label) for split in SCENE_SPLITS for label in range(len(SEMSEG_CLASSES))}
    crowded = build_scenes(tmp_path / "crowded", COUNTS, SceneParams(ood_kind="crowded"), seed=0)
    report = validate_dataset(DENSE_MULTITASK, crowded, SPEC)
    assert report.success, report.failed


def test_the_proxy_set_is_a_balanced_image_classification_dataset(tmp_path: Path) -> None:
    out = build_proxy(tmp_path / "proxy", per_class=4, val_per_class=2, test_per_class=2, seed=0)
    data = load_image_dataset(out)
    names = proxy_classes()
    assert len(names) == 12 and names[0] == "disc/checker" and data.meta["class_names"] == names
    assert data.x_train.shape == (48, 64, 64, 3) and data.x_val.shape == (24, 64, 64, 3)
    assert np.array_equal(np.bincount(data.y_test), np.full(12, 2))
    assert not any(texture in name for name in names for texture in UNSEEN_TEXTURES)
    spec = ImageSuiteSpec(height=64, width=64, channels=3, classes=list(range(12)), min_images_per_split=24)
    report = validate_dataset(IMAGE_CLASSIFICATION, out, spec)
    assert report.success, report.failed
    again = build_proxy(tmp_path / "again", per_class=4, val_per_class=2, test_per_class=2, seed=0)
    assert (again / "images.npz").read_bytes() == (out / "images.npz").read_bytes()


def test_the_contact_sheet_shows_every_field_per_scene(scenes_dir: Path) -> None:
    split = load_scene_dataset(scenes_dir).val
    sheet = contact_sheet(split, n=3)
    assert sheet.shape == (3 * 64, 5 * 64, 3) and sheet.dtype == np.uint8
    assert np.array_equal(sheet[64:128, :64], split.image[1])
    semseg_tile = sheet[:64, 64:128]
    assert np.all(semseg_tile[split.semseg[0] == 0] == 0)  # background black
    assert len(np.unique(semseg_tile.reshape(-1, 3), axis=0)) == len(np.unique(split.semseg[0]))
    normals_tile = sheet[:64, 256:320]
    invalid = np.all(split.normals[0] == 0, axis=-1)
    assert np.all(normals_tile[invalid] == 0) and np.all(normals_tile[split.semseg[0] == 0][:, 2][
        ~invalid[split.semseg[0] == 0]] == 255)  # the floor faces the viewer: z = 1 -> full blue
    assert contact_sheet(split, n=100).shape[0] == len(split) * 64


def test_bad_parameters_are_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ood_kind must be one of texture, crowded, got 'lighting'"):
        SceneParams(ood_kind="lighting")
    with pytest.raises(ValueError, match="min_objects must be >= 1 and <= max_objects"):
        SceneParams(min_objects=5, max_objects=4)
    code = main(["build", "--out", str(tmp_path / "x"), "--train", "2", "--val", "1", "--test", "1", "--ood", "0"])
    assert code == 2 and capsys.readouterr().err.startswith("error: counts must give every split")
    assert not (tmp_path / "x").exists()


def test_the_stage_parameters_are_recorded(scenes_dir: Path) -> None:
    meta = json.loads((scenes_dir / "meta.json").read_text())
    assert meta["textures"] == {"train": list(TEXTURES), "val": list(TEXTURES), "test": list(TEXTURES),
                                "ood": list(UNSEEN_TEXTURES)}
    assert meta["duplicates_dropped"] == {split: 0 for split in SCENE_SPLITS}
