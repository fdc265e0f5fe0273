"""Expected-slice regression checks (as diffusers' model tests): a few output values of the LRDM, CameraWan and TinyVAE
forwards on seeded tiny configurations, pinned. float32 on the CPU; a change to the numerics of a forward (an
operation reordered, a branch dropped, a different initialisation) moves them.

Every parameter gets a seeded perturbation after the model's own initialisation, so the zero-initialised branches
(Plücker and pose embeddings, deformation AdaLN, the CameraWan camera branch) contribute to the pinned values too.
A pinned value is ``output.flatten()[i]`` at six positions spread evenly over the output. To re-pin after an
intended change: ``python tests/test_expected_slices.py`` prints the current slices in this file's format.
"""

from __future__ import annotations

import pytest
import torch

from diff4splat.geometry.trajectories import make_trajectory
from diff4splat.models.camera_wan import CameraWan, CameraWanConfig, plucker_for_latents
from diff4splat.models.lrdm import LRDM, lrdm_preset
from diff4splat.models.tiny_vae import TinyVAE

ATOL = 1e-4


def _perturb(model: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model.eval()


def _slice(t: torch.Tensor, n: int = 6) -> list[float]:
    flat = t.detach().float().flatten()
    return flat[torch.linspace(0, flat.numel() - 1, n).long()].tolist()


def _lrdm_outputs(encoder: str) -> dict[str, torch.Tensor]:
    """Tiny dynamic LRDM (2 blocks of width 48) on 2 scenes of 16x24 at 3 query times: 3 frames (rgb) or 2 latent
    frames of a Wan2.1-layout VAE (16 channels, 8x; 5 frames)."""
    b, h, w = 2, 16, 24
    f = 3 if encoder == "rgb" else 5
    torch.manual_seed(0)
    extra = {"latent_channels": 16, "latent_stride_s": 8} if encoder == "latent" else {}
    cfg = lrdm_preset("tiny", dim=48, depth=2, num_heads=4, decoder_channels=8, encoder=encoder, **extra)
    model = _perturb(LRDM(cfg), seed=1)
    g = torch.Generator().manual_seed(2)
    c2w = torch.eye(4).repeat(b, f, 1, 1)
    c2w[..., :3, 3] = 0.3 * torch.randn(b, f, 3, generator=g)
    fx = torch.tensor([0.9, 1.3, 0.5, 0.5]) + 0.05 * torch.randn(b, f, 4, generator=g)
    times = torch.linspace(0, 1, f).repeat(b, 1)
    query = torch.tensor([[0.0, 0.4, 1.0]]).repeat(b, 1)
    if encoder == "rgb":
        inputs = {"images": torch.rand(b, f, 3, h, w, generator=g)}
    else:
        inputs = {"latents": torch.randn(b, 16, 2, h // 8, w // 8, generator=g), "image_size": (h, w)}
    with torch.no_grad():
        out = model(c2w, fx, times, query, **inputs)
    gs = out.gaussians
    return {
        "depth": out.depth,
        "means": gs.canonical.means,
        "colors": gs.canonical.colors,
        "opacities": gs.canonical.opacities,
        "delta_means": gs.delta_means,
        "delta_quats": gs.delta_quats,
    }


def _camera_wan_output() -> torch.Tensor:
    """Tiny CameraWan (a 2-layer WanTransformer3DModel, camera added to the patch tokens): the flow prediction for 2
    latent clips [16, 3, 4, 4] at per-token timesteps, with a text embedding and an orbit's Plücker rays."""
    torch.manual_seed(0)
    model = _perturb(CameraWan.from_config(CameraWanConfig(arch="tiny", vae_stride=[4, 8, 8])), seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 3, 4, 4, generator=g)
    text = torch.randn(2, 8, 32, generator=g)
    tr = make_trajectory("orbit_left", 9, strength=0.5)
    c2w, k = tr.c2w.float()[None].expand(2, -1, -1, -1), tr.fxfycxcy.float()[None].expand(2, -1, -1)
    t = model.token_timesteps(torch.tensor([300.0, 800.0]), x.shape)
    with torch.no_grad():
        return model(x, t, text, plucker_for_latents(c2w, k, 32, 32))


def _tiny_vae_outputs() -> dict[str, torch.Tensor]:
    """TinyVAE (Wan2.2 layout, width 8): latents of 5 frames of 32x32 and the frames decoded from them."""
    vae = _perturb(TinyVAE.tiny("wan22", seed=0), seed=1, std=0.1)
    frames = torch.rand(1, 5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = vae.encode(frames)
        return {"latents": z, "frames": vae.decode(z, clamp=False)}


EXPECTED_LRDM = {
    "rgb": {
        "depth": [1.48444, 1.45886, 1.51493, 1.55907, 1.4617, 1.35137],
        "means": [-1.00656, 1.44391, 0.167005, 0.273765, 1.55626, 0.978633],
        "colors": [0.437168, 0.555202, 0.613648, 0.451039, 0.549265, 0.519023],
        "opacities": [0.112363, 0.103069, 0.118899, 0.126149, 0.12267, 0.107884],
        "delta_means": [-0.129151, -0.00707697, 0.024064, 0.0224215, -0.163598, -0.0641717],
        "delta_quats": [0.912872, -0.208991, -0.111209, 0.996209, -0.120831, -0.0431772],
    },
    "latent": {
        "depth": [1.16653, 1.17729, 1.14707, 1.18978, 1.15912, 1.19394],
        "means": [-0.9047, 1.52757, 1.07654, 1.73875, 1.34337, 0.936579],
        "colors": [0.379856, 0.621892, 0.634614, 0.609064, 0.594701, 0.609576],
        "opacities": [0.094768, 0.0983368, 0.0937909, 0.0960528, 0.099578, 0.0967157],
        "delta_means": [-0.0415437, -0.280893, 0.0950832, 0.00554826, -0.29695, 0.0437281],
        "delta_quats": [0.941263, -0.23916, -0.326279, -0.0896009, -0.0532189, -0.165388],
    },
}
EXPECTED_CAMERA_WAN = [-1.63885, -0.715071, 0.0837946, -0.387102, 0.477015, 0.132203]
EXPECTED_TINY_VAE = {
    "latents": [-0.0484701, -0.176772, -0.0306583, -0.0146953, -0.243521, 0.167536],
    "frames": [0.0445317, -0.0101344, -0.0699796, -0.0546302, -0.0140813, -0.0792748],
}


def _check(got: torch.Tensor, expected: list[float], name: str) -> None:
    torch.testing.assert_close(
        torch.tensor(_slice(got)), torch.tensor(expected), atol=ATOL, rtol=0, msg=lambda m: f"{name}: {m}"
    )


@pytest.mark.parametrize("encoder", ["rgb", "latent"])
def test_lrdm_expected_slices(encoder: str) -> None:
    outputs = _lrdm_outputs(encoder)
    assert outputs.keys() == EXPECTED_LRDM[encoder].keys()
    for name, value in outputs.items():
        _check(value, EXPECTED_LRDM[encoder][name], f"LRDM({encoder}) {name}")


def test_camera_wan_expected_slice() -> None:
    _check(_camera_wan_output(), EXPECTED_CAMERA_WAN, "CameraWan flow prediction")


def test_tiny_vae_expected_slices() -> None:
    outputs = _tiny_vae_outputs()
    assert outputs.keys() == EXPECTED_TINY_VAE.keys()
    for name, value in outputs.items():
        _check(value, EXPECTED_TINY_VAE[name], f"TinyVAE {name}")


def _format(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


if __name__ == "__main__":
    for enc in ("rgb", "latent"):
        print(f"LRDM {enc}:")
        for k, v in _lrdm_outputs(enc).items():
            print(f'    "{k}": {_format(_slice(v))},')
    print("CameraWan:", _format(_slice(_camera_wan_output())))
    print("TinyVAE:")
    for k, v in _tiny_vae_outputs().items():
        print(f'    "{k}": {_format(_slice(v))},')
