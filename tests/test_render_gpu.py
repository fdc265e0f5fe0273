"""GPU parity: the pure-torch renderer against gsplat on random scenes (batched scenes and cameras).

Run on a CUDA machine: ``pytest -m gpu tests/test_render_gpu.py``. With ``DIFF4SPLAT_PARITY_OUT=<file.json>`` the
measured errors are also written there (the numbers recorded in experiments/benchmarks/results/).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from diff4splat.gaussians import Gaussians
from diff4splat.geometry.cameras import look_at
from diff4splat.rendering import render

pytestmark = pytest.mark.gpu

FIELDS = ("means", "quats", "scales", "opacities", "colors")
RESULTS: list[dict] = []


def random_scene(seed: int, B: int, V: int, N: int, sh_degree: int | None, device: str):
    """B scenes of N Gaussians in front of V cameras looking at the scene centre from around the origin."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(B, N, 3, generator=g) * torch.tensor([2.4, 1.8, 2.0]) + torch.tensor([-1.2, -0.9, 2.0])
    quats = torch.randn(B, N, 4, generator=g)
    scales = torch.exp(torch.rand(B, N, 3, generator=g) * 2.5 - 5.0)  # 0.007 .. 0.08
    opacities = torch.rand(B, N, generator=g) * 0.98 + 0.01
    if sh_degree is None:
        colors = torch.rand(B, N, 3, generator=g)
    else:
        colors = torch.randn(B, N, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    eye = (torch.rand(B, V, 3, generator=g) - 0.5) * torch.tensor([0.6, 0.4, 0.4])
    target = torch.tensor([0.0, 0.0, 3.0]) + (torch.rand(B, V, 3, generator=g) - 0.5) * 0.4
    c2w = look_at(eye, target)
    fxfycxcy = torch.tensor([0.9, 1.1, 0.5, 0.48]) + (torch.rand(B, V, 4, generator=g) - 0.5) * 0.1
    gs = Gaussians(means, quats, scales, opacities, colors).to(device)
    return gs, c2w.to(device), fxfycxcy.to(device)


def _render_with_grads(gs: Gaussians, c2w, fxfycxcy, H, W, backend, weights):
    leaves = {k: getattr(gs, k).detach().clone().requires_grad_(True) for k in FIELDS}
    out = render(Gaussians(**leaves), c2w, fxfycxcy, H, W, backend=backend, background=torch.tensor([0.2, 0.3, 0.4]))
    loss = (out.rgb * weights[0]).sum() + (out.depth * weights[1]).sum() + (out.alpha * weights[2]).sum()
    loss.backward()
    return out, {k: v.grad for k, v in leaves.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("seed", "sh_degree"),
    [(0, None), (1, None), (2, None), (3, 3)],
)
def test_torch_backend_matches_gsplat(seed: int, sh_degree: int | None) -> None:
    B, V, N, H, W = 2, 3, 4000, 72, 104  # W, H not multiples of the 16-pixel tile on purpose
    gs, c2w, K = random_scene(seed, B, V, N, sh_degree, "cuda")
    g = torch.Generator(device="cuda").manual_seed(100 + seed)
    weights = [torch.rand(B, V, c, H, W, device="cuda", generator=g) for c in (3, 1, 1)]
    out_g, grad_g = _render_with_grads(gs, c2w, K, H, W, "gsplat", weights)
    out_t, grad_t = _render_with_grads(gs, c2w, K, H, W, "torch", weights)

    record = {"seed": seed, "sh_degree": sh_degree, "B": B, "V": V, "N": N, "H": H, "W": W}
    for name in ("rgb", "depth", "alpha"):
        a, b = getattr(out_t, name).detach(), getattr(out_g, name).detach()
        record[f"{name}_max_abs"] = float((a - b).abs().max())
        record[f"{name}_rel"] = float((a - b).abs().max() / b.abs().max())
    for k in FIELDS:
        a, b = grad_t[k], grad_g[k]
        record[f"grad_{k}_rel_norm"] = float((a - b).norm() / b.norm())
        record[f"grad_{k}_rel_max"] = float((a - b).abs().max() / b.abs().max())
    record["coverage"] = float((out_g.alpha > 0.5).float().mean())
    RESULTS.append(record)
    path = os.environ.get("DIFF4SPLAT_PARITY_OUT")
    if path:
        with open(path, "w") as f:
            json.dump(RESULTS, f, indent=1)

    assert record["coverage"] > 0.3  # the scenes are not empty
    for name in ("rgb", "depth", "alpha"):
        assert record[f"{name}_rel"] <= 1e-4, (name, record)
    for k in FIELDS:
        assert record[f"grad_{k}_rel_norm"] <= 1e-3, (k, record)
