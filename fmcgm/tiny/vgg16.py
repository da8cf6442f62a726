"""A torchvision-format VGG16 weight file with seeded random weights, standing in for
``vgg16-397923af.pth`` (LPIPS's backbone), which cannot be downloaded here."""
from __future__ import annotations

from pathlib import Path

from fmcgm.evaluation import VGG16_FILE  # noqa: F401  (the file name the LPIPS loader looks for)


def save_random_vgg16(path: str | Path, seed: int = 0) -> Path:
    """Write the ``features.*`` part of a vgg16 state_dict (all LPIPS reads) with seeded weights."""
    import torch
    import torchvision
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path
