"""TEST DOUBLE of ic_gan's data_utils/utils.py: load_pretrained_feature_extractor with ic_gan's signature."""

import torch
from torch import nn


class FakeResNet(nn.Module):
    """Returns (features, None) like ic_gan's resnet50(classifier_run=False)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 8)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3))) + 1.0, None


def load_pretrained_feature_extractor(
    pretrained_path="", feature_extractor="classification", backbone_feature_extractor="resnet50"
):
    assert feature_extractor == "selfsupervised"
    torch.load(pretrained_path)
    torch.manual_seed(1)
    return FakeResNet()
