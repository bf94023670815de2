"""Precompute instance-conditioned generative views, one shard per job (rule entry point).

002_a484f64d5b0479a0.txt precomputes 10 synthetic views per training image with an
instance-conditioned generator; training then draws a view index per image per epoch.
Generation parameters follow IMPLEMENTATION_NOTES.md ("Generative views"): diffusers
``StableUnCLIPImg2ImgPipeline``, DDIM scheduler with ``rescale_betas_zero_snr=True`` and
``timestep_spacing="trailing"``, 10 steps, eta 0, no prompt, noise level 0, guidance 10,
fp16 on CUDA; input centre-cropped to a square and resized to ``--image-size``; output
resized to ``--image-size``. One torch generator per (image index, view index), see
:func:`view_seed` (the authors seed per view index only; per image too makes every
view reproducible on its own, independent of batching, chunking and sharding)::

    python -m sslaug.augment.generative_views --data DIR --split train \\
        --generator unclip --model PATH|tiny-random --views 10 \\
        --shard I --num-shards S --image-size 224 --out SHARD_DIR
    python -m sslaug.augment.generative_views --verify SHARD_DIR

Shard ``I`` covers the contiguous indices ``[N*I//S, N*(I+1)//S)``. Output::

    SHARD_DIR/views.npy      uint8 [n_images, views, H, W, 3]
    SHARD_DIR/manifest.json  {"shard", "num_shards", "indices": [start, end], "views",
                              "sha256": {"views.npy": ...}, "generator": {...}, ...}

Resumable: finished chunks of ``--chunk-size`` images go to ``views_<start>.npy`` in a
work directory (default ``SHARD_DIR.partial``, a sibling, because a workflow manager
deletes an incomplete job's declared output before rerunning it) and are recorded with
their hashes in ``progress.json``; a rerun reuses them and generates only the rest.
``SHARD_DIR`` appears atomically once complete; the work directory is then removed.

``--model tiny-random`` assembles a tiny unCLIP pipeline with random weights from
configs (no download), for tests and the mini scale. ``--generator icgan`` generates with
ICGAN (:mod:`sslaug.augment.icgan_views`: the user's ic_gan checkout and weights, or
``tiny-random``) into the same shard format.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from sslaug.data.formats import DataError, open_classification
from sslaug.io import atomic_dir, atomic_write_bytes, atomic_write_json, sha256sum

logger = logging.getLogger(__name__)

GENERATORS = ("unclip", "icgan")
TINY_RANDOM = "tiny-random"
VIEWS_FILE = "views.npy"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"

# Tiny pipeline sizes: small enough for 2 denoising steps at 64 px in ~0.1 s on a CPU.
_TINY_DIM = 32
_TINY_PROMPT_LEN = 77


class ShardError(DataError):
    """A generated shard is missing or corrupt; the message names the offending file."""


@dataclass(frozen=True)
class ViewConfig:
    """What to generate. Defaults are the paper's (IMPLEMENTATION_NOTES.md) unCLIP settings."""

    generator: str = "unclip"
    model: str = TINY_RANDOM
    views: int = 10
    image_size: int = 224
    num_inference_steps: int = 10
    guidance_scale: float = 10.0
    eta: float = 0.0
    noise_level: int = 0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in progress and manifest files)."""
        return asdict(self)


# --------------------------------------------------------------------------- small helpers


def shard_range(num_items: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous ``[start, end)`` of shard ``shard`` of ``num_shards`` (sizes differ by <= 1)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} out of range for {num_shards} shards")
    return num_items * shard // num_shards, num_items * (shard + 1) // num_shards


def view_seed(seed: int, index: int, view: int) -> int:
    """Seed of the generator for view ``view`` of dataset image ``index``.

    SeedSequence mixes the three integers, so nearby (index, view) pairs get unrelated
    noise, unlike ``seed + index * views + view`` schemes that collide across settings.
    """
    state = np.random.SeedSequence([seed, index, view]).generate_state(1, dtype=np.uint64)[0]
    return int(state % (2**63))


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline float output in [0, 1] -> uint8."""
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _resize_hwc(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- unCLIP pipelines


def _paper_scheduler(scheduler_config: Any) -> Any:
    """The notes' DDIM scheduler: zero-terminal-SNR betas and trailing timestep spacing."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler_config, rescale_betas_zero_snr=True, timestep_spacing="trailing")


def _tiny_clip_image_encoder() -> Any:
    """The tiny random-weight ``CLIPVisionModelWithProjection`` of the tiny pipeline (from torch's current RNG)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=_TINY_DIM, projection_dim=_TINY_DIM, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, image_size=32, patch_size=4,
        )
    )  # fmt: skip


def _tiny_clip_processor() -> Any:
    """The tiny pipeline's CLIP image processor: 32 px resize and centre crop, CLIP's mean/std."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_tiny_clip_image_encoder(seed: int = 0) -> tuple[Any, Any]:
    """``(image_encoder, image_processor)`` of :func:`build_tiny_unclip_pipeline` with the same ``seed``.

    The same weights as the tiny pipeline's conditioning encoder, without importing diffusers
    (the mini scale's "CLIP" of the representation-similarity table, 002 Table 2).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _tiny_clip_image_encoder(), _tiny_clip_processor()


def build_tiny_unclip_pipeline(seed: int = 0) -> Any:
    """A tiny ``StableUnCLIPImg2ImgPipeline`` with random weights, built offline from configs.

    No tokenizer / text encoder: callers pass zero ``prompt_embeds`` instead. Seeded, so
    every process builds the same model (a resumed shard must match its first chunks).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    dim = _TINY_DIM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image_encoder = _tiny_clip_image_encoder()  # first: same weights as build_tiny_clip_image_encoder(seed)
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64), attention_head_dim=(2, 4), cross_attention_dim=dim,
            # unCLIP conditions the UNet on [noised image embedding, noise-level embedding].
            class_embed_type="projection", projection_class_embeddings_input_dim=2 * dim,
            upcast_attention=True, use_linear_projection=True,
        )  # fmt: skip
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 64), latent_channels=4, layers_per_block=1,
        )  # fmt: skip
    # SD 2.1 unCLIP's own scheduler settings (v-prediction), then the paper's DDIM overrides.
    base = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=_tiny_clip_processor(),
        image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=None,
        text_encoder=None,
        unet=unet,
        scheduler=_paper_scheduler(base.config),
        vae=vae,
    )
    return pipe


def load_unclip_pipeline(model: str, dtype: torch.dtype) -> Any:
    """A pretrained unCLIP pipeline (e.g. a local stable-diffusion-2-1-unclip-small) with the paper's scheduler."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    if not Path(model).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataError(f"unCLIP model {model} not found locally (HF_HUB_OFFLINE=1)")
    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(model, torch_dtype=dtype)
    pipe.scheduler = _paper_scheduler(pipe.scheduler.config)
    return pipe


class UnclipViewGenerator:
    """Generates ``views`` unCLIP variations of each image of a batch."""

    def __init__(self, config: ViewConfig, device: torch.device, batch_size: int = 8) -> None:
        self.config = config
        self.device = device
        self.batch_size = batch_size
        # fp16 on CUDA as the authors; CPUs lack fast fp16 kernels.
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.tiny = config.model == TINY_RANDOM
        pipe = build_tiny_unclip_pipeline(config.seed) if self.tiny else load_unclip_pipeline(config.model, self.dtype)
        pipe.set_progress_bar_config(disable=True)
        if self.tiny and self.dtype != torch.float32:  # pretrained ones were loaded in self.dtype
            pipe = pipe.to(dtype=self.dtype)
        self.pipe = pipe.to(device)
        # Real models generate at their native size (768 px for SD 2.1 unCLIP) and are
        # resized afterwards; the tiny model generates at the target size (multiple of 8).
        self.gen_size: int | None = 8 * math.ceil(config.image_size / 8) if self.tiny else None

    def describe(self) -> dict[str, Any]:
        """What produced the views (goes into the manifest)."""
        sched = self.pipe.scheduler.config
        return {
            "name": "unclip",
            "model": self.config.model,
            "pipeline": type(self.pipe).__name__,
            "scheduler": {
                "class": type(self.pipe.scheduler).__name__,
                "rescale_betas_zero_snr": bool(sched.get("rescale_betas_zero_snr")),
                "timestep_spacing": sched.get("timestep_spacing"),
                "prediction_type": sched.get("prediction_type"),
            },
            "num_inference_steps": self.config.num_inference_steps,
            "guidance_scale": self.config.guidance_scale,
            "eta": self.config.eta,
            "noise_level": self.config.noise_level,
            "prompt": "",
            "dtype": str(self.dtype).removeprefix("torch."),
            "generation_size": self.gen_size or "model default",
            "seed": self.config.seed,
            "seeding": "torch.Generator per (image index, view index): view_seed(seed, index, view)",
        }

    def _prompt_kwargs(self, batch: int) -> dict[str, Any]:
        """No prompt: the real pipeline encodes "" itself; the tiny one has no text encoder."""
        if not self.tiny:
            return {"prompt": [""] * batch}
        zeros = torch.zeros(batch, _TINY_PROMPT_LEN, _TINY_DIM, dtype=self.dtype, device=self.device)
        return {"prompt_embeds": zeros, "negative_prompt_embeds": zeros}

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, indices: Sequence[int]) -> np.ndarray:
        """``images`` uint8 ``[n, 3, S, S]`` (dataset indices ``indices``) -> uint8 ``[n, views, S, S, 3]``."""
        cfg = self.config
        pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        pixels = self.pipe.feature_extractor(images=pil, return_tensors="pt").pixel_values
        pairs = [(i, v) for i in range(len(pil)) for v in range(cfg.views)]
        out = np.empty((len(pil), cfg.views, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        for b in range(0, len(pairs), self.batch_size):
            batch = pairs[b : b + self.batch_size]
            generators = [torch.Generator().manual_seed(view_seed(cfg.seed, indices[i], v)) for i, v in batch]
            result = self.pipe(
                image=pixels[[i for i, _ in batch]],
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                eta=cfg.eta,
                noise_level=cfg.noise_level,
                generator=generators,
                height=self.gen_size,
                width=self.gen_size,
                output_type="np",
                **self._prompt_kwargs(len(batch)),
            ).images
            for (i, v), img in zip(batch, _to_uint8(result)):
                out[i, v] = _resize_hwc(img, cfg.image_size)
        return out


def make_generator(config: ViewConfig, device: torch.device, batch_size: int, icgan: Any = None) -> Any:
    """The view generator for ``config.generator`` (ICGAN: :mod:`sslaug.augment.icgan_views`, ``icgan`` its settings)."""
    if config.generator == "icgan":
        from sslaug.augment.icgan_views import IcganViewGenerator

        return IcganViewGenerator(config, device, batch_size, icgan)
    if config.generator != "unclip":
        raise ValueError(f"unknown generator {config.generator!r}; choose from {GENERATORS}")
    return UnclipViewGenerator(config, device, batch_size)


# --------------------------------------------------------------------------- shards


def _fingerprint(config: ViewConfig, data_dir: Path, split: str, shard: int, num_shards: int,
                 indices: tuple[int, int], chunk_size: int) -> dict[str, Any]:  # fmt: skip
    """Everything that determines the chunk files; a mismatch on resume discards them."""
    return {
        "config": config.to_dict(),
        "data": str(data_dir.resolve()),
        "split": split,
        "shard": shard,
        "num_shards": num_shards,
        "indices": list(indices),
        "chunk_size": chunk_size,
    }


def _load_progress(work_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Progress of an interrupted run with the same fingerprint, else a fresh (empty) one."""
    path = work_dir / PROGRESS_FILE
    if path.is_file():
        try:
            progress = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            progress = {}
        if progress.get("fingerprint") == fingerprint:
            return progress
        logger.warning("%s is from different settings: discarding its chunks", path)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    return {"fingerprint": fingerprint, "chunks": {}}


def _chunk_name(start: int) -> str:
    return f"views_{start:09d}.npy"


def _chunk_is_done(work_dir: Path, name: str, progress: dict[str, Any]) -> bool:
    """A chunk counts as done only if recorded in progress.json and its bytes still match."""
    record = progress["chunks"].get(name)
    path = work_dir / name
    if record is None or not path.is_file():
        return False
    if sha256sum(path) != record["sha256"]:
        logger.warning("%s does not match its recorded sha256: regenerating it", path)
        return False
    return True


def _assemble(out_dir: Path, work_dir: Path, progress: dict[str, Any], expected: tuple[int, ...],
              manifest: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Concatenate the chunks into ``views.npy`` (streamed through a memmap) and write the manifest."""
    start = progress["fingerprint"]["indices"][0]
    with atomic_dir(out_dir) as tmp:
        views_path = tmp / VIEWS_FILE
        if expected[0] == 0:
            np.save(views_path, np.zeros(expected, dtype=np.uint8))
        else:
            dest = np.lib.format.open_memmap(views_path, mode="w+", dtype=np.uint8, shape=expected)
            for name, record in sorted(progress["chunks"].items()):
                a, b = record["indices"]
                dest[a - start : b - start] = np.load(work_dir / name)
            dest.flush()
            del dest  # close the memmap before hashing and renaming
        manifest = {**manifest, "sha256": {VIEWS_FILE: sha256sum(views_path)}}
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def generate_shard(
    data_dir: str | os.PathLike,
    split: str,
    config: ViewConfig,
    shard: int,
    num_shards: int,
    out_dir: str | os.PathLike,
    chunk_size: int = 8,
    batch_size: int = 8,
    work_dir: str | os.PathLike | None = None,
    device: str = "auto",
    on_chunk_done: Callable[[int, int], None] | None = None,
    icgan: Any = None,
) -> dict[str, Any]:
    """Generate (or resume) one shard; see the module docstring for the layout.

    Args:
        chunk_size: images per resumable chunk file.
        batch_size: (image, view) pairs per pipeline call.
        work_dir: chunk directory; default ``<out_dir>.partial``.
        on_chunk_done: called with ``(start, end)`` after each newly written chunk
            (progress reporting; tests use it to simulate an interruption).
        icgan: :class:`~sslaug.augment.icgan_views.IcganSettings` (ICGAN only; part of the fingerprint).

    Returns:
        ``{"manifest": ..., "generated": [chunk starts], "reused": [chunk starts]}``.
    """
    if config.generator not in GENERATORS:
        raise ValueError(f"unknown generator {config.generator!r}; choose from {GENERATORS}")
    if config.generator == "icgan":  # fail before touching any file
        from sslaug.augment.icgan_views import IcganSettings, check_icgan_inputs

        icgan = icgan or IcganSettings()
        check_icgan_inputs(config.model, icgan)
    if chunk_size < 1 or batch_size < 1 or config.views < 1:
        raise ValueError("chunk_size, batch_size and views must be >= 1")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    dataset = open_classification(data_dir, split, image_size=config.image_size)
    start, end = shard_range(len(dataset), shard, num_shards)
    fingerprint = _fingerprint(config, data_dir, split, shard, num_shards, (start, end), chunk_size)
    if icgan is not None:
        fingerprint["icgan"] = icgan.to_dict()
    if out_dir.is_dir():
        try:
            manifest = verify_shard(out_dir)
            if manifest.get("fingerprint") == fingerprint:
                logger.info("%s already complete and verified", out_dir)
                return {"manifest": manifest, "generated": [], "reused": []}
        except ShardError as err:
            logger.warning("regenerating %s: %s", out_dir, err)
    work = Path(work_dir) if work_dir is not None else out_dir.with_name(out_dir.name + ".partial")
    progress = _load_progress(work, fingerprint)
    generator: UnclipViewGenerator | None = None  # built lazily: a full resume needs no model
    generated: list[int] = []
    reused: list[int] = []
    for a in range(start, end, chunk_size):
        b = min(a + chunk_size, end)
        name = _chunk_name(a)
        if _chunk_is_done(work, name, progress):
            reused.append(a)
            continue
        if generator is None:
            generator = make_generator(config, resolve_device(device), batch_size, icgan)
            progress["generator"] = generator.describe()  # saved with the chunk record below
        t0 = time.perf_counter()
        images = torch.stack([dataset[i][0] for i in range(a, b)])
        views = generator.generate(images, range(a, b))
        data = _npy_bytes(views)
        atomic_write_bytes(work / name, data)
        progress["chunks"][name] = {"indices": [a, b], "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_json(work / PROGRESS_FILE, progress)  # after the chunk: never records a missing file
        generated.append(a)
        dt = time.perf_counter() - t0
        logger.info("images [%d, %d) of [%d, %d): %.3f s/view", a, b, start, end, dt / ((b - a) * config.views))
        if on_chunk_done is not None:
            on_chunk_done(a, b)
    manifest = {
        "shard": shard,
        "num_shards": num_shards,
        "indices": [start, end],
        "views": config.views,
        "image_size": config.image_size,
        "shape": [end - start, config.views, config.image_size, config.image_size, 3],
        "data": {"dir": str(data_dir), "split": split},
        "generator": progress.get("generator") or {"name": config.generator, "model": config.model},
        "fingerprint": fingerprint,
    }
    manifest = _assemble(out_dir, work, progress, tuple(manifest["shape"]), manifest)
    shutil.rmtree(work, ignore_errors=True)
    return {"manifest": manifest, "generated": generated, "reused": reused}


def verify_shard(shard_dir: str | os.PathLike) -> dict[str, Any]:
    """Check a shard against its manifest (hashes, shape, dtype); returns the manifest.

    Raises:
        ShardError: naming the missing or corrupt file.
    """
    shard_dir = Path(shard_dir)
    manifest_path = shard_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ShardError(f"incomplete shard: {manifest_path} missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        hashes = dict(manifest["sha256"])
        start, end = manifest["indices"]
        views, size = int(manifest["views"]), int(manifest["image_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ShardError(f"corrupt shard manifest: {manifest_path} ({err!r})") from err
    if VIEWS_FILE not in hashes:
        raise ShardError(f"corrupt shard manifest: {manifest_path} has no sha256 for {VIEWS_FILE}")
    for name, digest in hashes.items():
        path = shard_dir / name
        if not path.is_file():
            raise ShardError(f"incomplete shard: {path} missing")
        actual = sha256sum(path)
        if actual != digest:
            raise ShardError(f"corrupt shard file: {path} (sha256 {actual[:12]}..., manifest says {digest[:12]}...)")
    arr = np.load(shard_dir / VIEWS_FILE, mmap_mode="r")
    expected = (end - start, views, size, size, 3)
    if arr.dtype != np.uint8 or arr.shape != expected:
        raise ShardError(
            f"corrupt shard file: {shard_dir / VIEWS_FILE} is {arr.dtype} {arr.shape}, expected uint8 {expected}"
        )
    return manifest


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the ``generative_views`` rule."""
    p = argparse.ArgumentParser(prog="python -m sslaug.augment.generative_views", description=__doc__.split("\n\n")[0])
    p.add_argument("--verify", metavar="SHARD_DIR", help="only verify an existing shard and exit")
    p.add_argument("--data", help="prepared dataset directory (array or imagefolder format)")
    p.add_argument("--split", default="train")
    p.add_argument("--generator", choices=GENERATORS, default="unclip")
    p.add_argument("--model", default=TINY_RANDOM, help="unCLIP model / ICGAN experiment directory or 'tiny-random'")
    p.add_argument("--icgan-code", help="ICGAN: facebookresearch/ic_gan checkout (CC-BY-NC)")
    p.add_argument("--icgan-commit", help="ICGAN: the commit the checkout must be at")
    p.add_argument("--swav", help="ICGAN: SwAV ResNet-50 weights (swav_pretrained.pth.tar)")
    p.add_argument("--truncation", type=float, default=0.7, help="ICGAN noise truncation (authors: 0.7)")
    p.add_argument("--views", type=int, default=10)
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", help="shard output directory")
    p.add_argument("--steps", type=int, default=10, help="denoising steps (paper: 10)")
    p.add_argument("--guidance-scale", type=float, default=10.0, help="paper: 10 (pipeline default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=8, help="images per resumable chunk")
    p.add_argument("--batch-size", type=int, default=8, help="(image, view) pairs per pipeline call")
    p.add_argument("--work-dir", help="chunk directory (default OUT.partial)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rule; errors print one line (naming the path) and return non-zero."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:  # the rule's thread budget: oversubscribed OpenMP threads crawl
        torch.set_num_threads(args.threads)
    try:
        if args.verify:
            manifest = verify_shard(args.verify)
            print(f"{args.verify}: OK, images {manifest['indices']}, {manifest['views']} views")
            return 0
        if not args.data or not args.out:
            parser.error("--data and --out are required unless --verify is given")
        config = ViewConfig(
            generator=args.generator, model=args.model, views=args.views, image_size=args.image_size,
            num_inference_steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
        )  # fmt: skip
        icgan = None
        if args.generator == "icgan":
            from sslaug.augment.icgan_views import IcganSettings

            icgan = IcganSettings(code=args.icgan_code, commit=args.icgan_commit, swav=args.swav, truncation=args.truncation)  # fmt: skip
        result = generate_shard(
            args.data, args.split, config, args.shard, args.num_shards, args.out,
            chunk_size=args.chunk_size, batch_size=args.batch_size, work_dir=args.work_dir, device=args.device,
            icgan=icgan,
        )  # fmt: skip
    except NotImplementedError as err:
        print(f"generative_views: {err}", file=sys.stderr)
        return 3
    except (DataError, ShardError) as err:
        print(f"generative_views: error: {err}", file=sys.stderr)
        return 2
    logger.info(
        "wrote %s: images %s, %d chunks generated, %d reused",
        args.out, result["manifest"]["indices"], len(result["generated"]), len(result["reused"]),
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
