"""Shared fixtures: offline hub, one CPU thread, generated mini data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A stray pretrained=True must fail fast instead of retrying a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mini_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini classification set, prepared by the real preparation entry point."""
    from sslaug.data.prepare import main as prepare

    out = tmp_path_factory.mktemp("data") / "mini"
    assert prepare(["--dataset", "mini", "--source", "generate", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def small_mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller mini set (24 train / 4 test images per class) for short training runs."""
    from sslaug.data.prepare import main as prepare

    out = tmp_path_factory.mktemp("small") / "mini"
    options = ["--option", "train_per_class=24", "--option", "test_per_class=4"]
    assert prepare(["--dataset", "mini", "--source", "generate", "--out", str(out), *options]) == 0
    return out
