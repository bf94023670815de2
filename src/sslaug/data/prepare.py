"""Entry point of the ``prepare_dataset`` rule.

    python -m sslaug.data.prepare --dataset NAME --source SOURCE --out DIR \
        [--root PATH] [--seed N] [--option key=value ...]

SOURCE is ``generate`` (mini data: ``mini*``, ``mini_styles*``, ``mini_coco*``),
``download`` (fetch checksum-verified archives into ``--root``, default
``DIR/../_downloads/NAME``) or ``path`` (``--root`` is an extracted copy).

The dataset is built in a temporary directory next to DIR and renamed into place only
when complete, so DIR is either absent, the previous good version, or the new one.
Bad input ends with a one-line error naming the offending file and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from sslaug.data import mini
from sslaug.data.formats import DataError, write_array_dataset, write_coco_meta, write_coco_split
from sslaug.data.sources import prepare_from_source
from sslaug.io import atomic_dir


def parse_options(items: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"--option {item!r}: expected key=value")
        options[key.strip()] = value.strip()
    return options


def _generator_kwargs(fn: Callable[..., Any], options: dict[str, str]) -> dict[str, int]:
    """Integer keyword arguments of a mini generator from ``--option`` values."""
    allowed = [p for p in inspect.signature(fn).parameters if p != "seed"]
    kwargs = {}
    for key, value in options.items():
        if key not in allowed:
            raise DataError(f"--option {key}: not an option of {fn.__name__} (allowed: {', '.join(allowed)})")
        try:
            kwargs[key] = int(value)
        except ValueError:
            raise DataError(f"--option {key}={value}: expected an integer") from None
    return kwargs


def generate(name: str, out: Path, seed: int, options: dict[str, str]) -> dict[str, Any]:
    """Write a mini dataset chosen by name prefix (mini_styles*, mini_coco*, mini*) into ``out``."""
    source = {"type": "generate", "seed": seed, "options": options}
    if name.startswith("mini_styles"):
        ds = mini.make_mini_styles(seed, **_generator_kwargs(mini.make_mini_styles, options))
    elif name.startswith("mini_coco"):
        splits = mini.make_mini_coco(seed, **_generator_kwargs(mini.make_mini_coco, options))
        for split, data in splits.items():
            write_coco_split(out, split, data.coco, data.images)
            keypoints = mini.mini_person_keypoints(data.coco)
            (out / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(keypoints))
        counts = {split: len(data.images) for split, data in splits.items()}
        return write_coco_meta(out, name, mini.MINI_COCO_CATEGORIES, counts, source)
    elif name.startswith("mini"):
        ds = mini.make_mini_classification(seed, **_generator_kwargs(mini.make_mini_classification, options))
    else:
        raise DataError(f"--source generate only makes mini*, mini_styles*, mini_coco* datasets, not {name!r}")
    ds.name = name
    return write_array_dataset(out, ds, source)


def build(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Prepare the dataset described by ``args`` into the (temporary) directory ``out``."""
    options = parse_options(args.option)
    root = Path(args.root) if args.root else None
    if args.source == "generate":
        return generate(args.dataset, out, args.seed, options)
    default_downloads = Path(args.out).parent / "_downloads" / args.dataset
    return prepare_from_source(args.dataset, out, args.source, root, options, args.seed, default_downloads)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sslaug.data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="dataset name, e.g. mini, cifar10, imagenet100, coco")
    p.add_argument("--source", required=True, choices=["generate", "download", "path", "manual"])
    p.add_argument("--out", required=True, help="prepared dataset directory (replaced atomically)")
    p.add_argument("--root", default=None, help="download directory (download) or dataset copy (path)")
    p.add_argument("--seed", type=int, default=0, help="seed for generated data")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="preparer option")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 bad input)."""
    args = _parser().parse_args(argv)
    out = Path(args.out)
    try:
        with atomic_dir(out) as tmp:
            meta = build(args, tmp)
            # mkdtemp makes the directory private (0700); a dataset should get normal permissions.
            tmp.chmod(0o777 & ~_umask())
    except (DataError, NotImplementedError, OSError) as err:
        # One line, naming the file: the message is what a user sees in the Snakemake log.
        print(f"prepare_dataset {args.dataset}: error: {err}".replace("\n", " "), file=sys.stderr)
        return 1
    splits = ", ".join(f"{k}={v}" for k, v in meta.get("splits", {}).items())
    print(f"prepared {args.dataset} ({meta['format']}: {splits}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
