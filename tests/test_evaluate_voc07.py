"""VOC07 classification (linear SVMs, mAP) and the mAP of the classification metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sslaug.data.prepare import main as prepare
from sslaug.evaluate.common import mean_average_precision
from sslaug.evaluate.voc07 import main as voc07_main
from sslaug.io import atomic_torch_save
from sslaug.models.backbones import build_backbone, encoder_state


def test_mean_average_precision_perfect_and_reversed() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    perfect = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.0]])
    assert mean_average_precision(perfect, labels) == pytest.approx(100.0)
    reversed_scores = perfect.flip(1)
    # Each class's positives rank last: AP = (1/3 + 2/4) / 2.
    assert mean_average_precision(reversed_scores, labels) == pytest.approx(100 * (1 / 3 + 2 / 4) / 2)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    atomic_torch_save(encoder_state(build_backbone("tiny"), "tiny", 32, {}), path)
    return path


@pytest.mark.parametrize("dataset", ["mini", "mini_coco"])
def test_voc07_svm_map_on_array_and_coco_sets(dataset: str, encoder: Path, tmp_path: Path) -> None:
    data = tmp_path / dataset
    options = ["--option", "train_per_class=10", "--option", "test_per_class=5"] if dataset == "mini" else []
    assert prepare(["--dataset", dataset, "--source", "generate", "--out", str(data), *options]) == 0
    test_split = "test" if dataset == "mini" else "val"
    out = tmp_path / "metrics.json"
    spec = json.dumps({"costs": [0.1, 1.0], "folds": 2, "image_size": 32})
    code = voc07_main(["--encoder", str(encoder), "--data", str(data), "--test-split", test_split, "--spec", spec, "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["protocol"] == "voc07_cls" and 0.0 <= result["metrics"]["map"] <= 100.0


def test_clsa_sgd_classifier_learns_separable_multilabel_data() -> None:
    """CLSA's VOC07 protocol: one linear layer, SGD + multi-label BCE; on separable features it ranks
    every positive first (mAP 100), and an untrained layer does not."""
    from sslaug.evaluate.voc07 import VOC07Config, average_precision, sgd_scores

    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(200, 4, generator=generator) < 0.3).long()
    features = labels.float() * 2 - 1 + 0.1 * torch.randn(200, 4, generator=generator)
    config = VOC07Config(classifier="sgd", epochs=20, batch_size=32)
    scores = sgd_scores(features[:150], labels[:150].numpy(), features[150:], config, seed=0)
    assert average_precision(labels[150:].numpy(), scores, "all") == pytest.approx(100.0)
    untrained = VOC07Config(classifier="sgd", epochs=0)
    random_scores = sgd_scores(features[:150], labels[:150].numpy(), features[150:], untrained, seed=0)
    assert average_precision(labels[150:].numpy(), random_scores, "all") < 90.0
    with pytest.raises(ValueError, match="classifier"):
        VOC07Config(classifier="adam")
