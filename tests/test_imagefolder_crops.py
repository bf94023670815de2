"""Image-folder pretraining crops the full-resolution photo where it is decoded (the papers' crop).

The datasets here are prepared by the real preparer from JPEG trees the tests write:
landscape photos whose left and right bands are pure red, a colour the grey interior never
has. The centre crop of the old path cuts those bands off; the papers' RandomResizedCrop of
the full image can reach them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from PIL import Image

from sslaug.augment.generative import GeneratedViewBank, GenerativeAugment, GenerativeConfig
from sslaug.augment.view_maker import ViewMaker
from sslaug.augment.views import ViewPipeline, ViewRecipe
from sslaug.data import formats
from sslaug.data.crops import CropSpec, RandomCropViews, decode_full, decode_side, sample_seed
from sslaug.data.prepare import main as prepare_main
from sslaug.engine import batches
from sslaug.engine.batches import BatchSource
from sslaug.engine.pretrain import build_view_maker
from sslaug.engine.pretrain import main as pretrain_main
from sslaug.models.backbones import load_encoder
from sslaug.plan import PretrainRun, run_spec

MINI = yaml.safe_load((ROOT / "config" / "scales" / "mini.yaml").read_text())
WIDTH, HEIGHT, BAND = 96, 64, 10  # the centre crop keeps columns 16..79 of the 96
IMAGES = 64  # two batches of 32 per epoch
CPU = torch.device("cpu")


def banded_photo(seed: int) -> np.ndarray:
    """A grey (R = G = B) random-texture interior between two pure-red bands of BAND columns."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (HEIGHT // 8, WIDTH // 8), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    image = np.repeat(grey[..., None], 3, axis=2)
    image[:, :BAND] = image[:, -BAND:] = (255, 0, 0)
    return image


def red_fraction(images_uint8: torch.Tensor) -> torch.Tensor:
    """Per image: the share of clearly red pixels (JPEG leaves the bands' red within these bounds)."""
    r, g, b = images_uint8.int().unbind(-3)
    return ((r > 180) & (g < 80) & (b < 80)).float().mean(dim=(-2, -1))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image-folder dataset of IMAGES banded JPEG photos in two classes, prepared for real."""
    tmp = tmp_path_factory.mktemp("banded")
    for i in range(IMAGES):
        path = tmp / "tree" / "train" / f"class{i % 2}" / f"img{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(banded_photo(i)).save(path, format="JPEG", quality=95)
    out = tmp / "prepared"
    assert (
        prepare_main(["--dataset", "imagefolder", "--source", "path", "--root", str(tmp / "tree"), "--out", str(out)])
        == 0
    )
    assert formats.read_meta(out)["format"] == "imagefolder"
    return out


SPECS = (CropSpec(32, (0.08, 1.0)), CropSpec(32, (0.4, 1.0)), CropSpec(16, (0.05, 0.4)))


def test_crops_match_each_spec_and_can_reach_the_borders_the_centre_crop_cuts(photos: Path) -> None:
    dataset = formats.open_classification(photos, "train", image_size=32)
    centre = torch.stack([dataset[i][0] for i in range(IMAGES)])
    assert centre.shape == (IMAGES, 3, 32, 32) and red_fraction(centre).max() == 0  # the old path: never

    crops = RandomCropViews(dataset, SPECS, seed=0, epoch=0)
    views = [crops[i] for i in range(IMAGES)]
    for view in views:
        assert [tuple(v.shape) for v in view] == [(3, s.size, s.size) for s in SPECS]
        assert all(v.dtype == torch.uint8 for v in view)
    first = torch.stack([view[0] for view in views])
    with_border = (red_fraction(first) > 0).float().mean().item()
    # A crop of area >= 0.08 reaches a 10-of-96-column band in most images.
    assert with_border > 0.3, f"only {with_border:.0%} of full-image crops contain border pixels"


def test_same_seed_and_epoch_replay_the_same_crops_in_workers_and_after_resume(photos: Path) -> None:
    def source(workers: int) -> BatchSource:
        data = BatchSource(photos, "train", 32, seed=3, device=CPU, num_workers=workers)
        data.crop_on_decode(SPECS)
        return data

    rng_before = torch.get_rng_state()
    in_process = list(source(0).epoch(1))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the trainer's checkpointed generator is untouched
    in_workers = list(source(2).epoch(1))
    resumed = list(source(0).epoch(1, start_step=1))
    assert len(in_process) == 2 and len(resumed) == 1
    for (a, ia), (b, ib) in zip(in_process, in_workers):
        assert torch.equal(ia, ib) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(resumed[0][1], in_process[1][1])
    assert all(torch.equal(x, y) for x, y in zip(resumed[0][0], in_process[1][0]))
    # Another epoch draws other crops of the same image.
    crops = formats.open_classification(photos, "train")
    assert not torch.equal(RandomCropViews(crops, SPECS, 3, 1)[5][0], RandomCropViews(crops, SPECS, 3, 2)[5][0])
    assert sample_seed(3, 1, 5) != sample_seed(3, 2, 5)


def test_small_crops_of_a_large_photo_keep_its_detail(tmp_path: Path) -> None:
    """A 0.05-0.1 area crop at 32 px of a 512 x 384 photo of 14-px-period stripes (27 cycles
    across the height): from the full photo (draft-decoded at half size, antialiased resize)
    the stripes survive; the old path's 32 px centre square holds at most 16 cycles, so they
    are blurred away before its crop upsamples them."""
    stripes = np.zeros((384, 512, 3), dtype=np.uint8)
    stripes[:, (np.arange(512) // 7) % 2 == 1] = 255
    path = tmp_path / "tree" / "train" / "a" / "stripes.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(stripes).save(path, format="JPEG", quality=95)
    out = tmp_path / "prepared"
    assert (
        prepare_main(
            ["--dataset", "imagefolder", "--source", "path", "--root", str(tmp_path / "tree"), "--out", str(out)]
        )
        == 0
    )
    spec = CropSpec(32, (0.05, 0.1))
    assert decode_side([spec]) == 144  # so draft mode decodes the photo at 256 x 192
    dataset = formats.open_classification(out, "train", image_size=32)
    new = torch.stack([RandomCropViews(dataset, [spec], seed=0, epoch=epoch)[0][0] for epoch in range(16)])
    torch.manual_seed(0)
    old_pipeline = ViewPipeline(ViewRecipe(crop_scale=spec.scale), spec.size)
    old = (old_pipeline.crops(dataset[0][0][None].expand(16, -1, -1, -1)) * 255).round()
    new_contrast, old_contrast = new.float().std(dim=(1, 2, 3)).mean(), old.std(dim=(1, 2, 3)).mean()
    print(f"stripe contrast (std of 0..255 pixels): full-image crops {new_contrast:.1f}, old path {old_contrast:.1f}")
    assert new_contrast > 60 and new_contrast > 4 * old_contrast


def test_draft_decode_keeps_enough_pixels_for_the_smallest_crop(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.fromarray(np.full((600, 800, 3), 128, dtype=np.uint8)).save(path, format="JPEG")
    specs = [CropSpec(96, (0.25, 1.0)), CropSpec(32, (0.4, 1.0))]
    side = decode_side(specs)
    assert side == 192  # 96 / sqrt(0.25)
    image = decode_full(path, side)
    assert tuple(image.shape) == (3, 300, 400)  # halved by draft mode: the shorter side stays >= 192
    assert min(image.shape[1:]) * math.sqrt(0.25) >= 96
    assert tuple(decode_full(path, 400).shape) == (3, 600, 800)  # halving would undercut 400: full size
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(formats.CorruptImageError, match=str(broken)):
        decode_full(broken, side)


def test_evaluation_decode_resizes_to_256_then_centre_crops_224(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(banded_photo(0)).save(path)
    eval_view = formats.decode_resize_crop(path, 32, formats.EVAL_CROP_RATIO)  # shorter side 64 -> 37, crop 32
    with Image.open(path) as im:
        expected = np.asarray(im.resize((56, 37), Image.BILINEAR).crop((12, 2, 44, 34)))
    assert torch.equal(eval_view, torch.from_numpy(expected.copy()).permute(2, 0, 1))
    with pytest.raises(ValueError, match="crop_ratio"):
        formats.decode_resize_crop(path, 32, 1.5)


def test_pipelines_skip_their_crop_for_precropped_batches_and_check_the_size() -> None:
    options = (("crops", "multi"), ("key", "weak"), ("loss", "ddm"), ("query", "weak"))
    spec = run_spec(PretrainRun("mocov2", "clsa", options, "tiny", "mini", 1, 0), "mini", MINI)
    maker = build_view_maker(spec, 10, None, None, CPU)
    sizes = [s.size for s in maker.crop_specs()]
    assert sizes[:2] == [32, 32] and len(sizes) == 7  # query, key, five strong crops at their own sizes
    batch = [torch.randint(0, 255, (4, 3, s, s), dtype=torch.uint8) for s in sizes]
    views = maker(batch, torch.arange(4), 0)
    assert [tuple(v.shape[-2:]) for v in views] == [(s, s) for s in sizes]
    with pytest.raises(ValueError, match="pipelines are out of order"):
        maker(batch[::-1], torch.arange(4), 0)
    with pytest.raises(ValueError, match="6 pre-cropped batches for 7"):
        maker(batch[:6], torch.arange(4), 0)
    # A crop of the whole image with no flip is the identity: the rest of the pipeline sees the input.
    identity = ViewPipeline(ViewRecipe(jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0), 8, normalize=False)
    crop = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(identity(crop, precropped=True), crop.float() / 255)


def test_generated_views_on_precropped_input_are_cropped_with_the_pipelines_crop() -> None:
    """p = 1: every image is replaced, so the pre-cropped path must equal the full-image path."""
    generated = np.random.default_rng(0).integers(0, 255, (6, 2, 40, 40, 3), dtype=np.uint8)
    bank = GeneratedViewBank.__new__(GeneratedViewBank)
    bank.shards, bank.num_views = [(0, 6, generated)], 2
    augment = GenerativeAugment(bank, GenerativeConfig(p=1.0), 16, seed=0)
    pipeline = ViewPipeline(ViewRecipe(), 16)
    full, indices = torch.randint(0, 255, (6, 3, 40, 40), dtype=torch.uint8), torch.arange(6)
    torch.manual_seed(1)
    expected = augment(full, indices, 0, pipeline)
    torch.manual_seed(1)
    precropped = augment(torch.zeros(6, 3, 16, 16, dtype=torch.uint8), indices, 0, pipeline, precropped=True)
    assert torch.allclose(precropped, expected)
    # p = 0: the loader's crops go through the pipeline untouched by the bank.
    keep = GenerativeAugment(bank, GenerativeConfig(p=0.0), 16, seed=0)
    crops = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(2)
    out = keep(crops, indices, 0, pipeline, precropped=True)
    torch.manual_seed(2)
    torch.rand(6)  # the replacement draw
    assert torch.allclose(out, pipeline(crops, precropped=True))


def _pretrain(
    photos: Path, run_dir: Path, method: str, augmentation: str = "standard", options: tuple = (), **train
) -> dict:
    spec = run_spec(PretrainRun(method, augmentation, options, "tiny", "mini", 2, 0), "mini", MINI)
    spec["train"] = {**spec["train"], "batch_size": 32, "log_every_steps": 1, "warmup_epochs": 0, **train}
    args = [
        "--spec",
        json.dumps(spec),
        "--data",
        str(photos),
        "--run-dir",
        str(run_dir),
        "--out",
        str(run_dir / "e.pt"),
    ]
    assert pretrain_main(args) == 0
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert load_encoder(run_dir / "e.pt")[1]["backbone"] == "tiny"
    return spec


@pytest.mark.parametrize(
    ("method", "augmentation", "options", "workers"),
    [("simclr", "standard", (), 2), ("dino", "standard", (), 0), ("byol", "msr", (("beta_base", 0.3),), 0)],
)
def test_short_pretraining_on_an_image_folder(
    photos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    augmentation: str,
    options: tuple,
    workers: int,
) -> None:
    """A standard run (in 2 DataLoader workers), DINO's multi-crop (2 global + 2 local crops
    per image on decode) and MSR (one crop per multi-stage pipeline) train on the photos,
    their batches cropped on decode to the view maker's specs."""
    used: list[tuple[CropSpec, ...]] = []

    class Recorded(RandomCropViews):
        def __init__(self, dataset, specs, seed, epoch) -> None:
            used.append(tuple(specs))
            super().__init__(dataset, specs, seed, epoch)

    monkeypatch.setattr(batches, "RandomCropViews", Recorded)
    spec = _pretrain(photos, tmp_path, method, augmentation, options, num_workers=workers)
    expected = build_view_maker(spec, IMAGES, None, None, CPU).crop_specs()
    assert [s.size for s in expected] == {"simclr": [32, 32], "dino": [32, 32, 16, 16], "byol": [32, 32]}[method]
    assert used == [tuple(expected)] * 2  # one loader per epoch


def test_array_datasets_keep_the_device_crop(small_mini: Path) -> None:
    data = BatchSource(small_mini, "train", 32, seed=0, device=CPU)
    with pytest.raises(ValueError, match="array datasets are cropped on the device"):
        data.crop_on_decode(SPECS)
    images, _ = next(data.epoch(0))
    assert isinstance(images, torch.Tensor) and images.shape[-1] == 32
    assert isinstance(ViewMaker([ViewPipeline(ViewRecipe(), 16)])(images, torch.arange(32), 0)[0], torch.Tensor)
