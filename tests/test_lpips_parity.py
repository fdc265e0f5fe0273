"""LPIPS parity with the reference implementation, the ``lpips`` package (PyPI 0.1.4, richzhang/PerceptualSimilarity).

Both networks get the linear heads ``lpips`` ships (``lpips/weights/v0.1/vgg.pth``, read by our loader from the
package's own file) and one random VGG16 backbone; their distances agree to 1e-6.

``lpips`` imports ``torchvision`` (``pretrained_networks.py``: ``from torchvision import models as tv``), which has
no CPU wheel on PyPI and is never installed here. This test therefore puts a minimal stand-in ``torchvision`` module
into ``sys.modules`` for its own duration only: ``torchvision.models.vgg16(...)`` returns a module whose ``features``
is laid out exactly as torchvision's VGG16 ``features`` (31 layers: conv / ReLU(inplace) / max-pool, indices checked
below) and carries the same random weights as ours. Nothing else of torchvision is used by ``lpips``' VGG path.
"""

from __future__ import annotations

import copy
import importlib
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from diff4splat.losses.lpips import LPIPS

# torchvision's vgg16().features, layer by layer (configuration "D", no batch norm)
TORCHVISION_VGG16_FEATURES = (
    ["Conv2d", "ReLU"] * 2
    + ["MaxPool2d"]
    + ["Conv2d", "ReLU"] * 2
    + ["MaxPool2d"]
    + ["Conv2d", "ReLU"] * 3
    + ["MaxPool2d"]
    + ["Conv2d", "ReLU"] * 3
    + ["MaxPool2d"]
    + ["Conv2d", "ReLU"] * 3
    + ["MaxPool2d"]
)
TOL = 1e-6


def _torchvision_layout(features: nn.Sequential) -> nn.Sequential:
    """A copy of our VGG16 trunk (30 layers, up to relu5_3) in torchvision's layout: in-place ReLUs and the final
    max-pool (index 30) that LPIPS does not use."""
    layers = [nn.ReLU(inplace=True) if isinstance(m, nn.ReLU) else copy.deepcopy(m) for m in features]
    out = nn.Sequential(*layers, nn.MaxPool2d(kernel_size=2, stride=2))
    assert [type(m).__name__ for m in out] == TORCHVISION_VGG16_FEATURES
    return out


def _reference(monkeypatch: pytest.MonkeyPatch, features: nn.Sequential) -> nn.Module:
    """``lpips.LPIPS(net="vgg", version="0.1")`` with its shipped heads, on a trunk that copies ``features``."""
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")

    def vgg16(pretrained: bool = False, **kwargs) -> nn.Module:
        net = nn.Module()
        net.features = _torchvision_layout(features)
        return net

    models.vgg16 = vgg16
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    try:
        lpips = importlib.import_module("lpips")
    except ImportError as e:
        pytest.fail(f"the reference `lpips` package is missing ({e}); `make install` installs it (--no-deps)")
    # an earlier test may have imported lpips with another stand-in
    monkeypatch.setattr(lpips.pretrained_networks, "tv", models)
    return lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()


def _random_trunk(seed: int) -> nn.Sequential:
    """VGG16 trunk with torchvision's initialisation (Kaiming normal, fan-out) and small random biases, so every
    layer's activations keep their scale and the biases are exercised too."""
    torch.manual_seed(seed)
    features = LPIPS(pretrained=False).features
    for m in features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(m.bias, std=0.05)
    return features


@pytest.fixture
def pair(monkeypatch, tmp_path: Path) -> tuple[LPIPS, nn.Module]:
    """(ours, reference): ours loaded through ``LPIPS.load_weights`` from a saved trunk and ``lpips``' own
    ``vgg.pth`` (a CUDA-saved pickle, so this also checks that the loader maps it to the CPU)."""
    features = _random_trunk(seed=0)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16.pth")
    ref = _reference(monkeypatch, features)
    heads = Path(sys.modules["lpips"].__file__).parent / "weights" / "v0.1" / "vgg.pth"
    ours = LPIPS(pretrained=True, vgg_path=tmp_path / "vgg16.pth", lin_path=heads)
    return ours, ref


def _images(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g)
    y = (x + 0.5 * torch.randn(*shape, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("shape", [(3, 3, 64, 64), (2, 3, 48, 80)])
def test_lpips_matches_reference_package(pair, shape):
    ours, ref = pair
    x, y = _images(1, shape)
    with torch.no_grad():
        expected = ref(x, y, normalize=True).view(-1)  # normalize: inputs in [0, 1]
        got = ours(x, y)
    assert got.shape == (shape[0],) and (expected > 0.05).all()  # distances well away from 0
    assert (got - expected).abs().max().item() <= TOL
    # the heads really came from the package's file, and each layer's head matters at this tolerance
    for i, lin in enumerate(ours.lins):
        torch.testing.assert_close(lin.weight, ref.lins[i].model[-1].weight, atol=0, rtol=0)


def test_lpips_parity_check_catches_one_wrong_head_weight(pair):
    """The comparison above can fail: nudging a single weight of one head moves the distance past the tolerance."""
    ours, ref = pair
    x, y = _images(2, (2, 3, 64, 64))
    with torch.no_grad():
        expected = ref(x, y, normalize=True).view(-1)
        assert (ours(x, y) - expected).abs().max().item() <= TOL
        ours.lins[0].weight[0, 7, 0, 0] += 0.05  # the shipped weights of this head lie in [0.02, 1.28]
        assert (ours(x, y) - expected).abs().max().item() > 10 * TOL
