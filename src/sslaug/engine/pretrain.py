"""Rule entry point: pretrain one run and write its encoder.

    python -m sslaug.engine.pretrain --spec JSON --data DIR --run-dir DIR --out encoder.pt

``--spec`` is the run's resolved specification from the workflow (method, augmentation,
options, backbone, dataset, epochs, seed, image_size, train, hparams, views). Rerunning
the same command resumes from ``run-dir/checkpoint.pt``. Under ``torchrun`` every
process runs this same command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from sslaug.augment.view_maker import ViewMaker
from sslaug.augment.views import (
    MSR_RECIPE,
    MultiCrop,
    MultiStagePipeline,
    ViewPipeline,
    multicrop_pipelines,
    recipe_for,
)
from sslaug.data.formats import DataError
from sslaug.engine import dist
from sslaug.engine.batches import BatchSource
from sslaug.engine.trainer import NonFiniteLossError, TrainConfig, Trainer, fingerprint_of, seed_everything
from sslaug.io import atomic_torch_save, atomic_write_json
from sslaug.methods import build_method
from sslaug.models.backbones import build_backbone, encoder_state
from sslaug.plan import IMPLEMENTED_AUGMENTATIONS, IMPLEMENTED_OPTIONS
from sslaug.settings import apply_overrides

log = logging.getLogger("sslaug.pretrain")

def train_config_from(spec: dict[str, Any]) -> TrainConfig:
    """Build the TrainConfig, naming any unknown key; the table option ``fix_pred_lr`` sets
    SimSiam's constant predictor learning rate."""
    train = {**spec["train"], "epochs": int(spec["epochs"])}
    if "fix_pred_lr" in spec.get("options", {}):
        train["fix_pred_lr"] = bool(spec["options"]["fix_pred_lr"])
    return apply_overrides(TrainConfig, train)


def build_view_maker(
    spec: dict[str, Any],
    num_items: int,
    style_features: Path | None,
    generative_views: Path | None,
    device: torch.device,
) -> ViewMaker:
    """The method's view pipelines plus the run's augmentation variant."""
    options = dict(spec["options"])
    recipe = options.pop("recipe", None) if spec["augmentation"] == "standard" else None
    size = int(spec["image_size"])
    if spec.get("multicrop"):  # DINO, DINOv2: [global 1, global 2, *local crops] (+ Rescue's strong view third)
        multicrop = apply_overrides(MultiCrop, dict(spec["multicrop"]))
        global_views, local_views = multicrop_pipelines(spec["method"], spec.get("views"), size, multicrop)
        if spec["augmentation"] == "rescue":
            from sslaug.augment.strong import strong_pipelines

            strong = strong_pipelines("rescue", recipe_for(spec["method"], spec.get("views")), size, options, spec["strong"])[2]
            return ViewMaker([*global_views, strong, *local_views])
        if spec["augmentation"] != "standard":
            raise NotImplementedError(f"augmentation {spec['augmentation']!r} with multi-crop views is not implemented")
        return ViewMaker([*global_views, *local_views])
    pipelines = [ViewPipeline(r, size) for r in recipe_for(spec["method"], spec.get("views"), recipe=recipe)]
    # Imported only when used: the stylizer pulls in torchvision (~2 s per job at mini).
    if spec["augmentation"] == "sassl":
        from sslaug.augment.sassl import build_style_augment

        stylizer = spec.get("stylizer", {})
        style = build_style_augment(options, stylizer.get("weights"), stylizer.get("config"), style_features, device)
        return ViewMaker(pipelines, style=style)
    if spec["augmentation"] == "msr":  # two multi-stage pipelines: [weak1, aggressive1, weak2, aggressive2]
        return ViewMaker([MultiStagePipeline(MSR_RECIPE, size) for _ in range(2)])
    if spec["augmentation"] in ("clsa", "rescue"):
        from sslaug.augment.strong import strong_pipelines

        weak = recipe_for(spec["method"], spec.get("views"))
        return ViewMaker(strong_pipelines(spec["augmentation"], weak, size, options, spec.get("strong", {})))
    if spec["augmentation"] == "generative":
        from sslaug.augment.generative import GeneratedViewBank, GenerativeAugment, GenerativeConfig

        if generative_views is None:
            raise ValueError(f"run {spec['run']} needs --generative-views")
        bank = GeneratedViewBank(generative_views, num_items)
        augment = GenerativeAugment(bank, apply_overrides(GenerativeConfig, dict(options)), size, int(spec["seed"]))
        return ViewMaker(pipelines, generative=augment)
    return ViewMaker(pipelines)


def pretrain(
    spec: dict[str, Any],
    data_dir: Path,
    run_dir: Path,
    out: Path,
    style_features: Path | None = None,
    generative_views: Path | None = None,
) -> None:
    """Train ``spec`` to the end (resuming if possible) and write ``out`` (rank 0)."""
    augmentation = spec["augmentation"]
    if augmentation not in IMPLEMENTED_AUGMENTATIONS:
        raise NotImplementedError(
            f"augmentation {augmentation!r} is not implemented yet (implemented: {sorted(IMPLEMENTED_AUGMENTATIONS)})"
        )
    unknown = sorted(set(spec["options"]) - IMPLEMENTED_OPTIONS.get(augmentation, frozenset()))
    if unknown:
        raise NotImplementedError(f"option(s) {unknown} of augmentation {augmentation!r} not implemented yet")
    device = dist.init_from_env()
    seed = int(spec["seed"])
    seed_everything(seed + dist.rank())
    config = train_config_from(spec)
    image_size = int(spec["image_size"])
    backbone = build_backbone(spec["backbone"], image_size=image_size, **spec.get("backbone_kwargs", {}))
    # The run's length is a hyperparameter of epoch-based schedules (DINO's teacher temperature).
    hparams = {**spec["hparams"], "epochs": int(spec["epochs"])}
    method = build_method(spec["method"], backbone, hparams, augmentation, {**spec.get("strong", {}), **spec["options"]})
    data = BatchSource(
        data_dir,
        spec.get("pretrain_splits", "train"),  # datasets.<name>.splits.pretrain (STL-10: train + unlabeled)
        config.batch_size,
        seed,
        device,
        rank=dist.rank(),
        world_size=dist.world_size(),
        image_size=image_size,
        num_workers=config.num_workers,
    )
    view_maker = build_view_maker(spec, data.num_items, style_features, generative_views, device)
    if data.format == "imagefolder":  # the papers' crop: of the full-resolution photo, where it is decoded
        data.crop_on_decode(view_maker.crop_specs())
    trainer = Trainer(method, view_maker, data, config, run_dir, device, seed, fingerprint_of(spec))
    trainer.fit()
    if dist.rank() == 0:
        atomic_write_json(run_dir / "spec.json", spec)
        atomic_torch_save(encoder_state(method.backbone, spec["backbone"], image_size, spec), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="resolved run specification (JSON)")
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    parser.add_argument("--run-dir", required=True, type=Path, help="checkpoints, metrics, TensorBoard")
    parser.add_argument("--out", required=True, type=Path, help="encoder.pt to write")
    parser.add_argument("--style-features", type=Path, help="SASSL: precomputed external style embeddings")
    parser.add_argument("--generative-views", type=Path, help="generative views: directory of the shards")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs the job was given; >0 refuses to run on CPU")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.threads:  # the job's CPUs, shared by the torchrun processes on the node
        torch.set_num_threads(max(1, args.threads // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    try:
        if args.gpus > 0 and not torch.cuda.is_available():
            raise ValueError(
                f"this job asked for {args.gpus} GPU(s) but torch sees none "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                "refusing to train on the CPU. Check the partition / --gpus, or set gpu: 0 in the scale's resources."
            )
        spec = json.loads(args.spec)
        pretrain(spec, args.data, args.run_dir, args.out, args.style_features, args.generative_views)
    except (NonFiniteLossError, NotImplementedError, ValueError, KeyError, FileNotFoundError, DataError) as err:
        log.error("%s: %s", type(err).__name__, err)
        return 1
    except OSError as err:  # e.g. disk full while writing a checkpoint: the previous one is intact
        log.error("%s while writing to %s: %s (earlier checkpoints and results are kept)", type(err).__name__, args.run_dir, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
