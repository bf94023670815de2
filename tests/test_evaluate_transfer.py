"""Transfer protocols: full fine-tuning (SASSL Table 2) and detection (R-CNN + FPN, COCOeval).

Everything runs on CPU with the tiny backbone, a few dozen 32 px images and a
handful of 64 px COCO images, so each test takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sslaug.data.formats import ArrayDataset, write_array_dataset, write_coco_meta, write_coco_split  # noqa: E402
from sslaug.evaluate import detection, finetune  # noqa: E402
from sslaug.evaluate.detection import DetectionConfig, StageFeatures, build_detector, lr_factor  # noqa: E402
from sslaug.evaluate.finetune import FinetuneConfig, apply_overrides  # noqa: E402
from sslaug.models.backbones import build_backbone, encoder_state, load_encoder  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"

# Mini-scale detection settings: 64 px images, narrow FPN, no workers, short warm-up.
DET_SPEC: dict[str, Any] = {
    "iterations": 4, "batch_size": 2, "lr": 0.01, "warmup_iters": 2, "min_size_train": [64],
    "max_size_train": 64, "min_size_test": 64, "max_size_test": 64, "fpn_channels": 32,
    "box_head_dim": 64, "roi_batch_size_per_image": 64, "mask_head_channels": 32, "keypoint_head_channels": 32,
    "num_workers": 0, "eval_batch_size": 4,
}
FT_SPEC: dict[str, Any] = {"epochs": 1, "batch_size": 16, "lr": 0.05, "num_workers": 0, "eval_batch_size": 32}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """One intra-op thread: these tensors are tiny, and on the shared 2-core machine extra
    threads only spin against other processes (measured 0.5 s vs 4-14 s for the same test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny encoder in the encoder.pt format written by pretraining."""
    torch.manual_seed(0)
    model = build_backbone("tiny")
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    torch.save(encoder_state(model, "tiny", 32, {}), path)
    return path


def _array_set(directory: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
               num_classes: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    ds = ArrayDataset(name="fake", classes=[f"c{i}" for i in range(num_classes)],
                      splits={"train": train, "test": test})
    write_array_dataset(directory, ds, source="test")
    return directory


@pytest.fixture(scope="module")
def random_cls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 train / 32 test random 32 px images, 4 classes."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 4, n).astype(np.int64)

    return _array_set(tmp_path_factory.mktemp("cls") / "random", split(64), split(32), 4)


@pytest.fixture(scope="module")
def bright_dark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two trivially separable classes: dark (0) vs bright (1) noisy images."""
    rng = np.random.default_rng(1)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 2
        base = np.where(labels[:, None, None, None] == 1, 200, 40)
        noise = rng.integers(-40, 41, (n, 32, 32, 3))
        return np.clip(base + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)

    return _array_set(tmp_path_factory.mktemp("cls") / "bright_dark", split(128), split(64), 2)


def _coco_split(rng: np.random.Generator, n: int, first_id: int, size: int = 64
                ) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """n images with 1-2 bright axis-aligned rectangles each (category 1 or 3), polygon masks."""
    images, anns, files = [], [], []
    for k in range(n):
        image_id = first_id + k
        img = np.full((size, size, 3), 20, np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            w, h = (int(v) for v in rng.integers(12, 28, 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            cat = int(rng.choice([1, 3]))
            img[y : y + h, x : x + w] = (230, 60, 60) if cat == 1 else (60, 60, 230)
            anns.append({"id": len(anns) + 1 + 1000 * first_id, "image_id": image_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        name = f"{image_id:06d}.png"
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        files.append((name, img))
    coco = {"images": images, "annotations": anns, "categories": CATEGORIES}
    return coco, files


CATEGORIES = [{"id": 1, "name": "red", "supercategory": "shape"}, {"id": 3, "name": "blue", "supercategory": "shape"}]


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared coco-format directory: 6 train and 3 val images (non-contiguous category ids)."""
    rng = np.random.default_rng(2)
    directory = tmp_path_factory.mktemp("coco") / "mini_coco"
    directory.mkdir()
    counts = {}
    for split, n, first in (("train", 6, 1), ("val", 3, 100)):
        coco, files = _coco_split(rng, n, first)
        write_coco_split(directory, split, coco, files)
        counts[split] = n
    write_coco_meta(directory, "mini_coco", CATEGORIES, counts, source="test")
    return directory


@pytest.fixture(scope="module")
def coco_kp_dir(coco_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images plus person_keypoints_{split}.json, as the mini COCO generator writes them."""
    import shutil

    from sslaug.data.mini import mini_person_keypoints

    directory = tmp_path_factory.mktemp("coco_kp") / "mini_coco"
    shutil.copytree(coco_dir, directory)
    for split in ("train", "val"):
        coco = json.loads((directory / "annotations" / f"instances_{split}.json").read_text())
        (directory / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(mini_person_keypoints(coco)))
    return directory


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _check_common(result: dict[str, Any], protocol: str) -> None:
    assert result["status"] == "ok"
    assert result["protocol"] == protocol
    assert isinstance(result["seconds"], float) and result["seconds"] > 0
    assert isinstance(result["config"], dict)
    for value in result["metrics"].values():
        assert isinstance(value, float) and 0.0 <= value <= 100.0


# --------------------------------------------------------------------------- config parsing


def test_finetune_defaults_follow_the_canonical_protocol() -> None:
    cfg = FinetuneConfig()
    assert (cfg.steps, cfg.batch_size, cfg.momentum, cfg.nesterov, cfg.schedule) == (20_000, 256, 0.9, True, "cosine")
    assert cfg.crop_scale == (0.08, 1.0)


def test_spec_overrides_and_types() -> None:
    cfg = apply_overrides(FinetuneConfig, '{"epochs": 3, "lr": 1, "crop_scale": [0.2, 1]}')
    assert cfg.epochs == 3 and cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.crop_scale == (0.2, 1.0)
    det = apply_overrides(DetectionConfig, {"min_size_train": [64, 80], "schedule": "2x"})
    assert det.min_size_train == (64, 80) and det.total_iterations() == 180_000


@pytest.mark.parametrize("cls", [FinetuneConfig, DetectionConfig])
def test_unknown_spec_key_is_named(cls: type) -> None:
    with pytest.raises(ValueError, match="'learning_rate'"):
        apply_overrides(cls, {"learning_rate": 0.1})


def test_bad_spec_values() -> None:
    with pytest.raises(ValueError, match="'epochs'"):
        apply_overrides(FinetuneConfig, {"epochs": "many"})
    with pytest.raises(ValueError, match="arch"):
        apply_overrides(DetectionConfig, {"arch": "yolo"})
    with pytest.raises(ValueError, match="JSON object"):
        apply_overrides(FinetuneConfig, "[1, 2]")


def test_detectron2_schedules() -> None:
    one = DetectionConfig(schedule="1x")
    two = DetectionConfig(schedule="2x")
    assert (one.total_iterations(), one.milestones()) == (90_000, [60_000, 80_000])
    assert (two.total_iterations(), two.milestones()) == (180_000, [120_000, 160_000])
    mini = DetectionConfig(iterations=18)
    assert mini.milestones() == [12, 16]
    assert lr_factor(0, [12, 16], 0.1, 1000, 0.001) == pytest.approx(0.001)
    assert lr_factor(5000, [60_000, 80_000], 0.1, 1000, 0.001) == 1.0
    assert lr_factor(70_000, [60_000, 80_000], 0.1, 1000, 0.001) == pytest.approx(0.1)
    assert lr_factor(85_000, [60_000, 80_000], 0.1, 1000, 0.001) == pytest.approx(0.01)


# --------------------------------------------------------------------------- fine-tuning


def test_finetune_one_epoch_writes_metrics(encoder_path: Path, random_cls: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    rc = finetune.main(["--encoder", str(encoder_path), "--data", str(random_cls), "--train-split", "train",
                        "--test-split", "test", "--spec", json.dumps(FT_SPEC), "--seed", "0", "--threads", "1",
                        "--out", str(out)])
    assert rc == 0
    result = _read(out)
    _check_common(result, "finetune")
    assert (result["encoder"], result["data"]) == (str(encoder_path), str(random_cls))
    assert set(result["metrics"]) == {"top1", "top5"}
    assert result["metrics"]["top5"] >= result["metrics"]["top1"]
    assert result["config"]["epochs"] == 1 and result["info"]["steps"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp files left


def test_finetune_learns_separable_classes(encoder_path: Path, bright_dark: Path, tmp_path: Path) -> None:
    spec = {**FT_SPEC, "epochs": 4, "batch_size": 32, "lr": 0.1}
    result = finetune.run_finetune(encoder_path, bright_dark, "train", "test", spec, 0, tmp_path / "m.json")
    assert result["metrics"]["top1"] > 80.0
    assert result["metrics"]["top5"] == 100.0 and result["notes"]  # 2 classes: top-5 trivial, noted


def test_finetune_on_imagefolder_photos(encoder_path: Path, tmp_path: Path) -> None:
    """Decoded photos of different sizes: loaded at size/0.875, centre-cropped for the test."""
    from PIL import Image

    from sslaug.data.formats import write_imagefolder_dataset

    rng = np.random.default_rng(3)
    root = tmp_path / "photos"
    root.mkdir()
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for i in range(12):
        h, w = (int(v) for v in rng.integers(30, 60, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows["train" if i < 8 else "test"].append((f"{i}.png", i % 2))
    data = tmp_path / "prepared"
    data.mkdir()
    write_imagefolder_dataset(data, "photos", root, ["a", "b"], rows, source="test", image_size=32)
    spec = {**FT_SPEC, "batch_size": 4, "num_workers": 2}  # real worker processes, persistent across epochs
    result = finetune.run_finetune(encoder_path, data, "train", "test", spec, 0, tmp_path / "m.json")
    _check_common(result, "finetune")
    assert result["info"]["test_crop_ratio"] == 0.875 and result["info"]["num_test"] == 4


def test_finetune_is_seeded(encoder_path: Path, random_cls: Path, tmp_path: Path) -> None:
    a = finetune.run_finetune(encoder_path, random_cls, "train", "test", FT_SPEC, 3, tmp_path / "a.json")
    b = finetune.run_finetune(encoder_path, random_cls, "train", "test", FT_SPEC, 3, tmp_path / "b.json")
    assert a["metrics"] == b["metrics"] and a["info"]["final_train_loss"] == b["info"]["final_train_loss"]


def test_finetune_bad_spec_key_cli(encoder_path: Path, random_cls: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "metrics.json"
    rc = finetune.main(["--encoder", str(encoder_path), "--data", str(random_cls), "--spec", '{"epoch": 1}',
                        "--out", str(out)])
    assert rc == 1
    assert "'epoch'" in capsys.readouterr().err
    assert not out.exists()


def test_finetune_missing_encoder_names_path(random_cls: Path, tmp_path: Path) -> None:
    """Through the real ``python -m`` entry point: exit status 1, the path in the message, no output."""
    out = tmp_path / "metrics.json"
    missing = tmp_path / "nope" / "encoder.pt"
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sslaug.evaluate.finetune", "--encoder", str(missing), "--data", str(random_cls),
         "--train-split", "train", "--test-split", "test", "--spec", "{}", "--seed", "0", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert str(missing) in proc.stderr
    assert not out.exists()


def test_finetune_failure_leaves_no_output(encoder_path: Path, random_cls: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "metrics.json"
    rc = finetune.main(["--encoder", str(encoder_path), "--data", str(random_cls), "--test-split", "nosuchsplit",
                        "--spec", json.dumps(FT_SPEC), "--out", str(out)])
    assert rc == 1 and "nosuchsplit" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn"])
def test_detection_runs_and_reports_coco_metrics(arch: str, encoder_path: Path, coco_dir: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    # A low score threshold so the barely trained model does output detections to evaluate.
    spec = {**DET_SPEC, "arch": arch, "score_thresh": 0.0}
    rc = detection.main(["--encoder", str(encoder_path), "--data", str(coco_dir), "--train-split", "train",
                         "--test-split", "val", "--spec", json.dumps(spec), "--seed", "0", "--out", str(out)])
    assert rc == 0
    result = _read(out)
    _check_common(result, "detection")
    expected = {"ap", "ap50", "ap75", "aps", "apm", "apl"}
    if arch == "mask_rcnn":
        expected |= {"ap_mask", "ap50_mask", "ap75_mask"}
    assert set(result["metrics"]) == expected
    assert result["info"]["num_detections"] > 0
    assert result["info"]["num_classes"] == 4  # category ids 1 and 3 + background
    assert result["config"]["arch"] == arch


def test_detection_without_detections_reports_zeros(encoder_path: Path, coco_dir: Path, tmp_path: Path) -> None:
    spec = {**DET_SPEC, "iterations": 1, "score_thresh": 1.01}  # no score can pass: nothing detected
    result = detection.run_detection(encoder_path, coco_dir, "train", "val", spec, 0, tmp_path / "m.json")
    assert result["metrics"] == {k: 0.0 for k in ("ap", "ap50", "ap75", "aps", "apm", "apl")}
    assert any("no detections" in n for n in result["notes"])


def test_keypoint_rcnn_without_keypoints_is_clear(encoder_path: Path, coco_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "metrics.json"
    rc = detection.main(["--encoder", str(encoder_path), "--data", str(coco_dir),
                         "--spec", json.dumps({**DET_SPEC, "arch": "keypoint_rcnn"}), "--out", str(out)])
    assert rc == 1
    assert "person_keypoints_train.json" in capsys.readouterr().err
    assert not out.exists()


def test_keypoint_rcnn_runs_with_keypoints(encoder_path: Path, coco_kp_dir: Path, tmp_path: Path) -> None:
    spec = {**DET_SPEC, "arch": "keypoint_rcnn", "iterations": 2, "score_thresh": 0.0}
    result = detection.run_detection(encoder_path, coco_kp_dir, "train", "val", spec, 0, tmp_path / "m.json")
    assert {"ap_kp", "ap50_kp", "ap75_kp", "ap"} <= set(result["metrics"])
    assert all(0.0 <= v <= 100.0 for v in result["metrics"].values())


def test_detection_bad_spec_and_missing_encoder(encoder_path: Path, coco_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "metrics.json"
    assert detection.main(["--encoder", str(encoder_path), "--data", str(coco_dir), "--spec", '{"iters": 3}',
                           "--out", str(out)]) == 1
    assert "'iters'" in capsys.readouterr().err
    missing = tmp_path / "missing.pt"
    assert detection.main(["--encoder", str(missing), "--data", str(coco_dir), "--spec", json.dumps(DET_SPEC),
                           "--out", str(out)]) == 1
    assert str(missing) in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_detection_flip_keeps_targets_consistent(coco_dir: Path) -> None:
    from sslaug.data.formats import open_coco

    base, ann = open_coco(coco_dir, "train")
    ds = detection.DetectionTargets(base, detection._annotation_coco(ann), "mask_rcnn", flip_p=1.0)
    image, target = ds[0]
    plain_image, plain = base[0]
    assert torch.equal(image, plain_image.flip(-1))
    w = image.shape[-1]
    assert torch.allclose(target["boxes"][:, [2, 0]], w - plain["boxes"][:, [0, 2]])
    # Each flipped mask covers exactly its flipped box.
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]


# --------------------------------------------------------------------------- backbones for detection


def test_resnet_encoder_stages_load_strictly(tmp_path: Path) -> None:
    """A timm ResNet encoder.pt rebuilds strictly and exposes res2..res5 to the FPN."""
    model = build_backbone("resnet18_cifar", image_size=32)
    path = tmp_path / "r18.pt"
    torch.save(encoder_state(model, "resnet18_cifar", 32, {}), path)
    encoder, _ = load_encoder(path)
    body = StageFeatures(encoder)
    assert body.channels() == [64, 128, 256, 512]
    assert body.stages[0] is encoder.layer1  # the pretrained modules themselves, not copies
    cfg = DetectionConfig(fpn_channels=16, norm="frozen", freeze_at=2, min_size_train=(32,), max_size_train=32)
    detector = build_detector(encoder, cfg, num_classes=3)
    frozen = [p.requires_grad for p in encoder.layer1.parameters()]
    assert frozen and not any(frozen)
    assert all(p.requires_grad for p in encoder.layer2.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in detector.backbone.body.modules())
    with pytest.raises(RuntimeError):
        # A state dict with a key the ResNet does not have must fail loudly.
        bad = torch.load(path, weights_only=False)
        bad["state_dict"]["extra.weight"] = torch.zeros(1)
        torch.save(bad, path)
        load_encoder(path)


def test_stage_features_refers_vits_to_the_pyramid() -> None:
    """ViTs have no stages: StageFeatures names ViTDet's pyramid (tests/test_detection_vit.py tests it)."""

    class FakeViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Identity()

    with pytest.raises(TypeError, match="ViTSimpleFeaturePyramid"):
        StageFeatures(FakeViT())
