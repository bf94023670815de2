"""TEST DOUBLE of ic_gan's inference/utils.py: load_model_inference with ic_gan's signature."""

import torch
from torch import nn

CALLS = []


class FakeGenerator(nn.Module):
    """Same call as ic_gan's BigGAN Generator: forward(z, y, feats) -> images in [-1, 1]."""

    def __init__(self, dim_z, resolution):
        super().__init__()
        self.dim_z, self.resolution = dim_z, resolution
        self.proj = nn.Linear(dim_z + 8, 3)

    def forward(self, z, y, feats):
        CALLS.append({"z": z.clone(), "y": y, "feats": feats.clone()})
        color = torch.tanh(self.proj(torch.cat([z, feats], 1)))
        return color[:, :, None, None].expand(-1, -1, self.resolution, self.resolution)


def load_model_inference(config, device="cuda"):
    CALLS.append({"config": dict(config), "device": device})
    torch.manual_seed(0)
    return FakeGenerator(config["dim_z"], config["resolution"]).to(device), config
