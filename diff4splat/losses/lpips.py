"""LPIPS (Zhang et al. 2018) with the VGG16 backbone, written here so it needs neither torchvision nor a download.

Weights come from local files: the torchvision VGG16 state dict (``vgg16-397923af.pth``: keys ``features.N.*``) and
the LPIPS linear layers (the official ``vgg.pth``: keys ``linK.model.1.weight``), or one ``.safetensors`` holding
both under the same names. ``LPIPS(pretrained=False)`` builds a randomly initialised network of the same
architecture (tests); a positive LPIPS loss weight with missing weight files is an error naming the files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# torchvision's VGG16 "D" configuration; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)
_CHANNELS = (64, 128, 256, 512, 512)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            c_in = int(v)
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Perceptual distance between images [..., 3, H, W] in [0, 1]; returns one value per image [...]."""

    def __init__(
        self, pretrained: bool = True, vgg_path: str | Path | None = None, lin_path: str | Path | None = None
    ) -> None:
        super().__init__()
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.load_weights(vgg_path, lin_path)
        else:
            for lin in self.lins:
                nn.init.uniform_(lin.weight, 0.0, 0.1)  # LPIPS weights are non-negative
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, vgg_path: str | Path | None, lin_path: str | Path | None) -> None:
        missing = [str(p) for p in (vgg_path, lin_path) if p is None or not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"LPIPS weights not found: {missing}. Put torchvision's vgg16-397923af.pth and LPIPS's vgg.pth "
                "(or one .safetensors with both) under $CKPT_ROOT/lpips/, or set the LPIPS loss weight to 0."
            )
        from diff4splat.weights import WeightsError, load_state_checked, read_state_dict

        vgg = read_state_dict(vgg_path, "LPIPS weights")
        feats = {k[len("features.") :]: v for k, v in vgg.items() if k.startswith("features.")}
        load_state_checked(self.features, feats, vgg_path, "LPIPS VGG16 weights (features.*)")
        lin = read_state_dict(lin_path, "LPIPS weights")
        for i, layer in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin or not isinstance(lin[key], Tensor) or lin[key].shape != layer.weight.shape:
                raise WeightsError(
                    f"LPIPS weights: {lin_path}: missing or mis-shaped {key!r}; expected the "
                    f"LPIPS vgg.pth linear layers lin0..lin4"
                )
            layer.weight.data.copy_(lin[key])

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        lead = pred.shape[:-3]
        x = torch.cat([pred.reshape(-1, *pred.shape[-3:]), target.reshape(-1, *target.shape[-3:])]).float()
        x = ((x * 2 - 1) - self.shift) / self.scale
        n = x.shape[0] // 2
        total = x.new_zeros(n)
        tap = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == _TAPS[tap]:
                f = x / (x.norm(dim=1, keepdim=True) + 1e-10)
                d = (f[:n] - f[n:]).square()
                total = total + self.lins[tap](d).mean(dim=(1, 2, 3))
                tap += 1
                if tap == len(_TAPS):
                    break
        return total.view(lead)


def lpips_or_none(weight: float, pretrained: bool, vgg_path: str | None, lin_path: str | None) -> LPIPS | None:
    """An LPIPS module when its loss weight is positive (loading weights when ``pretrained``), else None."""
    if weight <= 0:
        return None
    return LPIPS(pretrained=pretrained, vgg_path=vgg_path, lin_path=lin_path)
