"""The public-weights route: image + trajectory + prompt -> a 4D scene from released checkpoints alone.

    python -m diff4splat.generate layout=public image=photo.jpg camera=cams.txt prompt="..." output_dir=out/

``layout=public`` (``conf/layout/public.yaml``) points the models at released files under ``$CKPT_ROOT``:

- the video model: **Wan2.2-Fun-5B-Control-Camera** (alibaba-pai, VideoX-Fun; ``models.camera_wan=<its folder>``,
  detected from its tensor shapes: a ``camera_injection="fun"`` CameraWan, `diff4splat.models.fun_camera`), with
  the UMT5 text encoder and the Wan2.2 VAE of Wan2.2-TI2V-5B-Diffusers (the Fun release uses the same two);
- the decoder: the Wan2.2 VAE (``decoder=wan``) or TAEHV's ``taew2_2.pth`` (``decoder=tiny_vae``: a released TAEHV
  file in ``models.aligner`` loads with `LatentAligner.from_taehv` and decodes the denoiser's latents unchanged);
- the reconstructor: MoVieS's ``movies_ckpt.safetensors`` (VGGSplaT; or VGGT-1B's ``model.pt``, or one of our LRDM
  exports) in ``models.lrdm``: it reads the decoded frames at its native size with the cameras and returns
  deformable Gaussians.

What differs from our CameraWan route lives here (`fun_latents`, called by `Diff4SplatPipeline` when its CameraWan
takes condition channels): the Fun model is conditioned on the Wan latents of the masked video (the first frame, then
mid-grey frames) and a mask (`fun_camera.fun_condition`), its Plücker maps are VideoX-Fun's (`fun_poses.fun_plucker`:
rays in pixel units, camera centres relative to the first camera, not normalised), and its guidance drops only the
prompt: both branches see the cameras (`fun_camera.sample_fun_latents`). The trajectory's intrinsics already describe
the model frame (the image's fit carries them through the crop), so they go to ``fun_plucker`` with ``pose_size``
equal to the model frame, which leaves them unchanged (VideoX-Fun instead assumes a 1280x720 source for every pose
file and rescales one focal length). Translations reach the Fun model as the trajectory gives them (RealEstate10K
files: their own units, which the release was trained on; ``trajectory.scale`` multiplies them).

``tiny=true layout=public`` builds tiny random-weight instances of these layouts and loads each through the loader
its released file goes through: a Fun release folder (original Wan key names plus ``control_adapter.*``), a MoVieS
checkpoint (``backbone.`` keys) and a TAEHV ``.pth``, so CI runs the public route end to end.

``meta.json`` lists every weight file used and its licence (`weight_files`, under ``models.weights``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.models.camera_wan import CAMERA_FORMAT, CameraWan, CameraWanConfig

if TYPE_CHECKING:
    from diff4splat.models.alignment import LatentAligner
    from diff4splat.models.lrdm import LRDM
    from diff4splat.pipelines.generation import Diff4SplatPipeline
    from diff4splat.pipelines.jobs import GenerateConfig
    from diff4splat.pipelines.stages import Stages
    from diff4splat.sampling import SamplingConfig

log = logging.getLogger("diff4splat.generate")

FUN_RELEASE = "Wan2.2-Fun-5B-Control-Camera"
CONF = Path(__file__).resolve().parents[2] / "conf"
# the tiny Fun-layout DiT: TI2V-5B's interface (48 latent channels, VAE 4x16x16, patch 2) with the 2·48 + 4 inputs,
# and one head of the released width (128), so its folder loads like the release's (heads = dim / 128)
TINY_FUN_ARCH = {"in_channels": 100, "out_channels": 48, "num_attention_heads": 1, "attention_head_dim": 128}
TINY_TAEHV = {"encoder_width": 8, "decoder_widths": [32, 16, 8, 8]}

# Licences of the released weights (their model cards / repositories), and of our own exports (this project's).
LICENCES = {
    "fun_camera": "Apache-2.0 (alibaba-pai/Wan2.2-Fun-5B-Control-Camera)",
    "wan22": "Apache-2.0 (Wan-AI/Wan2.2-TI2V-5B)",
    "movies": "MIT (chenguolin/MoVieS); fine-tuned from facebook/VGGT-1B, whose terms also apply",
    "vggt": (
        "facebook/VGGT-1B: Meta's terms on the model card (non-commercial research); facebook/VGGT-1B-Commercial: "
        "the VGGT License"
    ),
    "taehv": "MIT (madebyollin/taehv)",
    "ours": "MIT (diff4splat: a training export; check the licences of the weights it was trained from)",
}


# ----------------------------------------------------------------------------------------------------------------------
# Configuration: what models.camera_wan=<path> and models.aligner=<taew2_*.pth> stand for


def resolve_camera_wan(spec: CameraWanConfig | str, where: str = "models.camera_wan") -> CameraWanConfig:
    """The CameraWan config a path stands for: a Wan2.2-Fun camera release (a folder holding its
    ``diffusion_pytorch_model*.safetensors``, or those files) or our camera weights (``.safetensors`` written by
    ``CameraWan.save_camera_weights``, whose metadata holds the whole config, base weights included). Reads file
    headers only; a path that is neither is one `InputError`."""
    if isinstance(spec, CameraWanConfig):
        return spec
    from diff4splat.models import fun_camera

    path = Path(spec)
    expected = (
        f"expected the {FUN_RELEASE} folder (its diffusion_pytorch_model*.safetensors) or CameraWan camera weights "
        "(.safetensors written by training)"
    )
    if not path.exists():
        raise InputError(f"{where}={spec}: not found; {expected}")
    if path.is_file() and path.suffix == ".safetensors" and (meta := _safetensors_metadata(path)).get("format"):
        if meta.get("format") != CAMERA_FORMAT or "config" not in meta:
            raise InputError(f"{where}={spec}: metadata format {meta.get('format')!r}, no CameraWan config; {expected}")
        from diff4splat.configs import to_dataclass

        return replace(to_dataclass(CameraWanConfig, json.loads(meta["config"]), where), camera_weights=str(path))
    try:
        return fun_camera.camera_wan_config_for(path)
    except (ValueError, FileNotFoundError) as e:
        raise InputError(f"{where}={spec}: {str(e).splitlines()[0]}; {expected}") from e


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - not a readable safetensors header: the caller reports what it expected
        return {}


def resolve_config(cfg: GenerateConfig) -> GenerateConfig:
    """``cfg`` with ``models.camera_wan`` as a `CameraWanConfig` (a path resolved by `resolve_camera_wan`)."""
    cw = cfg.models.camera_wan
    if isinstance(cw, CameraWanConfig):
        return cfg
    resolved = CameraWanConfig() if cfg.tiny else resolve_camera_wan(cw)  # tiny=true builds its own models
    return replace(cfg, models=replace(cfg.models, camera_wan=resolved))


def check_fun_sampling(cfg: GenerateConfig) -> None:
    """The Fun release samples with its own guided loop (`fun_latents`); a few-step distilled sampler is for a
    distilled student, so ``sampling.mode=distilled`` with the Fun camera model is one `InputError`."""
    fun = cfg.layout == "public" or getattr(cfg.models.camera_wan, "camera_injection", None) == "fun"
    if fun and cfg.sampling.mode == "distilled":
        raise InputError(
            "sampling.mode=distilled: the Wan2.2-Fun camera model is not a distilled student; expected "
            "sampling.mode=scheduler with it (its release samples 50 guided steps)"
        )


def is_taehv_file(path: str | Path | None) -> bool:
    """A released TAEHV weight file (``taew2_2.pth``, ``taew2_1.pth``) rather than our aligner export."""
    return bool(path) and Path(path).suffix in (".pth", ".pt")


def load_aligner(path: str | Path) -> LatentAligner:
    """``models.aligner``: a released TAEHV ``.pth`` (`LatentAligner.from_taehv`) or our ``.safetensors`` export."""
    from diff4splat.models.alignment import LatentAligner

    return LatentAligner.from_taehv(path) if is_taehv_file(path) else LatentAligner.load(path)


# ----------------------------------------------------------------------------------------------------------------------
# meta.json: every weight file and its licence


def lrdm_file(path: str | Path | None) -> tuple[str, dict[str, Any]]:
    """What an LRDM weight file is, from its header only: ``("movies" | "vggt", {})`` for a released MoVieS / VGGT-1B
    checkpoint (``.safetensors`` by its tensor names; VGGT-1B's ``model.pt``), ``("ours", model config)`` for our
    export (the config from its metadata; empty for a ``.ckpt`` or an unreadable header)."""
    import json

    from diff4splat.models.movies import CHECKPOINT_PREFIX

    p = Path(path or "")
    if p.suffix != ".safetensors":
        return ("vggt" if p.name.startswith("model.") and p.suffix in (".pt", ".pth") else "ours"), {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), "pt") as f:
            keys, meta = list(f.keys()), f.metadata() or {}
        if "hparams" in meta:
            return "ours", dict(json.loads(meta["hparams"]).get("model") or {})
    except Exception:  # noqa: BLE001 - the loader reports an unreadable file; here it is simply not a released one
        return "ours", {}
    if any(k.startswith("aggregator.patch_embed.") for k in keys):
        return "vggt", {}
    movies = any(k.startswith((CHECKPOINT_PREFIX + "encoder.", "encoder.cls_token")) for k in keys)
    return ("movies" if movies else "ours"), {}


def weight_files(cfg: GenerateConfig, camera_wan: CameraWanConfig) -> list[dict[str, Any]]:
    """One entry per weight file the pipeline read: role, path, what it is, licence."""
    m = cfg.models
    rows: list[dict[str, Any]] = []

    def add(role: str, path: str | Path, what: str, licence: str) -> None:
        rows.append({"role": role, "path": str(path), "weights": what, "licence": licence})

    add("text_encoder", Path(m.text_encoder) / "text_encoder", "UMT5-XXL encoder of Wan2.2", LICENCES["wan22"])
    add("vae", Path(m.vae) / "vae", "Wan2.2 VAE", LICENCES["wan22"])
    cw = camera_wan
    if cw.camera_injection == "fun":
        from diff4splat.models.fun_camera import checkpoint_files

        for f in checkpoint_files(cw.original_paths[0] if len(cw.original_paths) == 1 else cw.original_paths):
            add("camera_wan", f, FUN_RELEASE, LICENCES["fun_camera"])
    elif cw.init == "pretrained":
        add("camera_wan", cw.pretrained_path, "Wan2.2-TI2V-5B DiT (diffusers)", LICENCES["wan22"])
    elif cw.init == "original":
        for p in cw.original_paths:
            add("camera_wan", p, "Wan2.2-TI2V-5B DiT (original layout)", LICENCES["wan22"])
    if cw.camera_weights:
        add(
            "camera_wan.camera_weights",
            cw.camera_weights,
            "CameraWan camera branch (training export)",
            LICENCES["ours"],
        )
    kind = lrdm_file(m.lrdm)[0]
    what = {"movies": "MoVieS (VGGSplaT)", "vggt": "VGGT-1B", "ours": "LRDM (training export)"}[kind]
    add("lrdm", m.lrdm, what, LICENCES[kind])
    if cfg.decoder == "tiny_vae":
        if is_taehv_file(m.aligner):
            add("aligner", m.aligner, f"TAEHV {Path(m.aligner).stem}", LICENCES["taehv"])
        else:
            add("aligner", m.aligner, "LatentAligner (training export)", LICENCES["ours"])
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Sampling with the Fun release


def fun_latents(
    pipe: Diff4SplatPipeline,
    image: Tensor,  # [3, H, W] in [0, 1] at the model size
    c2w: Tensor,  # [F, 4, 4] OpenCV c2w (camera 0 = identity)
    fxfycxcy: Tensor,  # [F, 4] normalised intrinsics of the model frame
    embeds: Tensor,  # [1 or 2, L, D]: the prompt, then the negative prompt when guided
    sampling: SamplingConfig,
    stages: Stages,
) -> Tensor:  # [1, C, T, h, w] denoised Wan-normalised latents
    """The Fun release's conditioning and denoising loop (module docstring); stages ``encode`` and ``sampling``."""
    from diff4splat.models import fun_camera as fc
    from diff4splat.sampling import make_scheduler

    f, (h, w) = c2w.shape[0], image.shape[-2:]
    dev = pipe.device
    num_latent = pipe.vae.check_frames(f)
    with stages("encode"), pipe._placed(pipe.vae):
        masked = fc.fun_masked_video(image[None].to(dev), f)  # [1, F, 3, H, W]
        condition = fc.fun_condition(pipe.vae.encode(masked).float())  # [1, 4 + C, T, h, w]
    model = pipe.camera_wan
    guided = sampling.guidance_scale > 1.0
    with stages("sampling", total=sampling.steps, unit="step") as bar, pipe._placed(model):

        def tick(*_: Any) -> None:  # a forward hook must return None
            bar.update(1)

        hook = model.register_forward_hook(tick)
        try:
            plucker = model.camera_maps(c2w[None].double().to(dev), fxfycxcy[None].double().to(dev), h, w)
            gen = torch.Generator("cpu").manual_seed(sampling.seed)
            c = model.latent_channels
            shape = (1, c, num_latent, h // pipe.vae.stride_s, w // pipe.vae.stride_s)
            noise = torch.randn(shape, generator=gen, dtype=torch.float32).to(dev)
            preset = replace(
                fc.FUN_5B_CAMERA_PRESET, shift=sampling.flow_shift, num_train_timesteps=sampling.num_train_timesteps
            )
            with torch.autocast(dev.type, torch.bfloat16, enabled=pipe.autocast):
                latents = fc.sample_fun_latents(
                    model,
                    noise,
                    condition,
                    plucker.to(dev),
                    embeds[:1],
                    embeds[1:2] if guided else None,
                    preset,
                    num_inference_steps=sampling.steps,
                    guidance_scale=sampling.guidance_scale,
                    scheduler=make_scheduler(sampling),
                )
        finally:
            hook.remove()
    return latents


# ----------------------------------------------------------------------------------------------------------------------
# Tiny instances of the public layouts, loaded through the released files' loaders


def write_fun_release(model: CameraWan, folder: str | Path) -> Path:
    """A fun-mode CameraWan written as the release ships it: one ``diffusion_pytorch_model.safetensors`` in the
    original Wan key layout plus ``control_adapter.*`` (what `fun_camera.load_fun_camera_wan` reads)."""
    from safetensors.torch import save_file

    from diff4splat.models import wan_convert

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = wan_convert.diffusers_to_original(model.transformer.state_dict())
    state.update({f"control_adapter.{k}": v for k, v in model.camera.state_dict().items()})
    path = folder / "diffusion_pytorch_model.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
    return path


def tiny_fun_camera_wan(seed: int = 0) -> CameraWan:
    """A 2-layer Fun-layout CameraWan (random weights), written as a Fun release folder and loaded from it."""
    from diff4splat.models.camera_wan import build_transformer
    from diff4splat.models.fun_camera import camera_wan_config_for

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = CameraWanConfig(arch="tiny", arch_overrides=TINY_FUN_ARCH, camera_injection="fun")
        model = CameraWan(build_transformer(cfg), "fun", cfg.vae_stride)
    with tempfile.TemporaryDirectory(prefix="diff4splat-tiny-fun-") as d:
        write_fun_release(model, Path(d) / FUN_RELEASE)
        return CameraWan.from_config(camera_wan_config_for(Path(d) / FUN_RELEASE, "float32"))


def tiny_movies_lrdm(seed: int = 0) -> LRDM:
    """The tiny VGGSplaT (``conf/model/lrdm_vggt_tiny.yaml``, random weights) written under MoVieS's checkpoint keys
    (``backbone.`` + its names) and loaded back through `released.lrdm_from_released`, as ``movies_ckpt`` is."""
    from omegaconf import OmegaConf

    from diff4splat.configs import to_dataclass
    from diff4splat.models.lrdm import LRDM, LRDMConfig
    from diff4splat.models.movies import CHECKPOINT_PREFIX
    from diff4splat.models.released import lrdm_from_released

    raw = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "lrdm_vggt_tiny.yaml"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LRDM(to_dataclass(LRDMConfig, raw, "lrdm_vggt_tiny"))
    state = {CHECKPOINT_PREFIX + k: v for k, v in model.backbone.state_dict().items()}
    return lrdm_from_released(state, "tiny MoVieS-layout checkpoint")


def tiny_taehv_aligner(seed: int = 0) -> LatentAligner:
    """A tiny TAEHV-layout TinyVAE (random weights, Wan2.2's 48 channels) saved as a ``.pth`` state dict and loaded
    with `LatentAligner.from_taehv`, as ``taew2_2.pth`` is."""
    from diff4splat.models.alignment import LatentAligner
    from diff4splat.models.tiny_vae import TinyVAE, TinyVAEConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = TinyVAE(TinyVAEConfig.preset("wan22", **TINY_TAEHV))
    with tempfile.TemporaryDirectory(prefix="diff4splat-tiny-taehv-") as d:
        path = Path(d) / "taew2_2.pth"
        torch.save(vae.state_dict(), path)
        return LatentAligner.from_taehv(path, "wan22", **TINY_TAEHV)


def tiny_public(cls: type[Diff4SplatPipeline], seed: int = 0, **kw: Any) -> Diff4SplatPipeline:
    """``tiny=true layout=public``: tiny Fun camera model, Wan2.2-layout VAE and UMT5, MoVieS-layout reconstructor
    and (``decoder=tiny_vae``) TAEHV decoder, each random and loaded through its released file's loader."""
    from diff4splat.models.text import TextEncoder
    from diff4splat.models.wan_vae import WanVAE

    with tempfile.TemporaryDirectory(prefix="diff4splat-tiny-text-") as folder:
        text = TextEncoder.tiny(folder, seed=seed)
    camera_wan = tiny_fun_camera_wan(seed)
    vae = WanVAE.tiny(seed=seed)
    lrdm = tiny_movies_lrdm(seed)
    aligner = tiny_taehv_aligner(seed) if kw.get("decoder") == "tiny_vae" else None
    random = "random weights (no licence)"
    sources = {
        "kind": "tiny random weights (untrained)",
        "layout": "public",
        "seed": seed,
        "weights": [
            {"role": role, "path": None, "weights": f"tiny {layout} layout", "licence": random}
            for role, layout in (
                ("text_encoder", "UMT5"),
                ("vae", "Wan2.2 VAE"),
                ("camera_wan", FUN_RELEASE),
                ("lrdm", "MoVieS (VGGSplaT)"),
                *((("aligner", "TAEHV"),) if aligner is not None else ()),
            )
        ],
    }
    return cls(text, camera_wan, vae, lrdm, aligner, untrained=True, sources=sources, **kw)
