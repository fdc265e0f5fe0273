"""Generation: one image + a camera trajectory + an optional prompt -> a video -> a 4D Gaussian scene (Diff4Splat).

``Diff4SplatPipeline`` holds the three models and chains them: the prompt (and Wan's negative prompt) through the UMT5
text encoder; the image through the Wan VAE to the first-frame latent; CameraWan samples the video latents along the
trajectory (flow matching, classifier-free guidance whose unconditional branch is the negative prompt with zeroed
cameras: ``diff4splat.sampling.sample_latents``); the latents become frames through the Wan VAE decoder or the aligned
TinyVAE decoder (``decoder``); the LRDM reads the latents directly (``latent`` encoder, the paper) or the decoded frames
(``rgb`` encoder, the released code) — the LRDM checkpoint says which — and returns ``DeformableGaussians``;
``render_outputs`` renders them along the trajectory and along a new orbit.

The pipeline takes an image already fitted to the model's frame size and cameras already checked
(`diff4splat.pipelines.inputs`); camera translations are in the video model's scene units (`diff4splat.geometry.scale`)
and the LRDM gets them rescaled to its units automatically (`diff4splat.pipelines.scale`; ``translation_scale``
overrides), its Gaussians scaled back: the scene is in the trajectory's units. Jobs, the configuration and the CLI driver are
`diff4splat.pipelines.jobs`; the files `diff4splat.pipelines.outputs`. ``Diff4SplatPipeline.tiny`` builds tiny
random-weight instances of the same classes: a smoke test on any machine, labelled untrained.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff4splat.cli import InputError
from diff4splat.gaussians import DeformableGaussians
from diff4splat.models.camera_wan import CameraWan, CameraWanConfig, plucker_for_latents
from diff4splat.pipelines import public
from diff4splat.pipelines.options import check_model_paths
from diff4splat.pipelines.reconstruction import Reconstruction, ReconstructionPipeline, native_size, size_multiple
from diff4splat.pipelines.scale import rescaled_reconstruction
from diff4splat.pipelines.stages import Stages
from diff4splat.rendering import render
from diff4splat.sampling import SamplingConfig, sample_latents

if TYPE_CHECKING:
    from diff4splat.pipelines.jobs import GenerateConfig

log = logging.getLogger("diff4splat.generate")

UNTRAINED_LABEL = "UNTRAINED: random-weight models (a smoke test or a benchmark); these outputs are not a result"
# tiny instances of the real classes (Wan2.2 interface: 48 latent channels, 16x spatial, 4x temporal)
TINY_CAMERA_WAN = {"arch": "tiny", "arch_overrides": {"in_channels": 48, "out_channels": 48}, "vae_stride": (4, 16, 16)}
TINY_LRDM = {"dim": 48, "depth": 2, "num_heads": 4, "decoder_channels": 8, "patch_size": 16, "gaussian_stride": 8}
RENDER_VIEWS_PER_PASS = 8  # views rasterised together by Diff4SplatPipeline.render
TINY_ALIGNER = {
    "version": "wan22",
    "tiny_vae": {"encoder_width": 8, "decoder_widths": [32, 16, 8, 8]},
    "mapper_width": 8,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={name}: CUDA is not available on this machine (use device=cpu or device=auto)")
    return device


@dataclass
class Generation:
    """What one generation produced (tensors on the pipeline's device)."""

    latents: Tensor  # [C, T, h, w] normalised Wan latents
    video: Tensor  # [F, 3, H, W] in [0, 1], the decoded video
    scene: Reconstruction  # gaussians (unbatched, pruned), c2w [F, 4, 4] in trajectory units, fxfycxcy, times, scale
    lrdm_frames: Tensor  # [F_in] long: the video frames the LRDM read (latent encoder: all)
    timings: dict[str, float]


def _randomise_zero_inits(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Give all-zero parameters small random values (the zero-initialised camera and deformation branches), so a tiny
    random model exercises those paths instead of skipping them."""
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p) * std)


class Diff4SplatPipeline:
    """Image + cameras + prompt -> CameraWan video latents -> (decoded frames) -> LRDM -> ``DeformableGaussians``.

    Args:
        text_encoder: ``models.text.TextEncoder`` (UMT5); its ``dim`` must equal CameraWan's ``text_dim``.
        camera_wan: ``CameraWan`` whose latent channels and VAE stride match ``vae``.
        vae: ``WanVAE``: encodes the first frame; decodes the video when ``decoder="wan"``.
        lrdm: ``LRDM`` (``latent`` encoder: reads the latents; ``rgb``: reads decoded frames).
        aligner: ``LatentAligner`` whose TinyVAE decodes the video when ``decoder="tiny_vae"``.
        device: where the models run. ``offload``: models live on the CPU and visit ``device`` one at a time.
        text_encoder_on_cpu: the text encoder always runs on the CPU. ``untrained``: tiny random weights (labelled).
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        camera_wan: CameraWan,
        vae: nn.Module,
        lrdm: nn.Module,
        aligner: nn.Module | None = None,
        decoder: Literal["wan", "tiny_vae"] = "wan",
        device: torch.device | str = "cpu",
        offload: bool = False,
        text_encoder_on_cpu: bool = False,
        render_backend: str = "auto",
        untrained: bool = False,
        sources: dict | None = None,
    ) -> None:
        self.text_encoder, self.camera_wan, self.vae, self.lrdm, self.aligner = (
            text_encoder,
            camera_wan.eval(),
            vae.eval(),
            lrdm.eval(),
            aligner.eval() if aligner is not None else None,
        )
        self.decoder, self.device, self.offload = decoder, torch.device(device), offload
        self.text_device = torch.device("cpu") if text_encoder_on_cpu else self.device
        self.untrained, self.sources = untrained, dict(sources or {})
        lc = self.lrdm.config
        if decoder not in ("wan", "tiny_vae"):
            raise ValueError(f"decoder must be 'wan' or 'tiny_vae', got {decoder!r}")
        if decoder == "tiny_vae" and aligner is None:
            raise ValueError("decoder=tiny_vae needs a LatentAligner (models.aligner)")
        mismatches = [
            ("text encoder dim", text_encoder.dim, "CameraWan text_dim", camera_wan.text_dim),
            ("CameraWan latent channels", camera_wan.latent_channels, "Wan VAE latent channels", vae.latent_channels),
            ("CameraWan VAE stride", camera_wan.vae_stride[1], "Wan VAE spatial stride", vae.stride_s),
        ]
        if lc.encoder == "latent":
            mismatches += [
                ("LRDM latent channels", lc.latent_channels, "Wan VAE", vae.latent_channels),
                ("LRDM latent_stride_s", lc.latent_stride_s, "Wan VAE", vae.stride_s),
            ]
        if aligner is not None:
            mismatches.append(("aligner latent channels", aligner.latent_channels, "Wan VAE", vae.latent_channels))
        for a, va, b, vb in mismatches:
            if va != vb:
                raise ValueError(f"models do not fit together: {a} = {va} but {b} = {vb}")
        self._views = ReconstructionPipeline(self.lrdm, self.vae, render_backend)
        if not offload:
            for m in (camera_wan, vae, lrdm, aligner):
                if m is not None:
                    m.to(self.device)
            text_encoder.to(self.text_device)
        if untrained:
            log.warning(UNTRAINED_LABEL)

    # --- building -----------------------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0, lrdm_encoder: Literal["latent", "rgb"] = "latent", **kw: Any) -> Diff4SplatPipeline:
        """Tiny random-weight instances of the real classes (Wan2.2 interface); ``kw`` go to the constructor."""
        from diff4splat.models.alignment import AlignerConfig, LatentAligner
        from diff4splat.models.lrdm import LRDM, lrdm_preset
        from diff4splat.models.text import TextEncoder
        from diff4splat.models.wan_vae import WanVAE

        with tempfile.TemporaryDirectory(prefix="diff4splat-tiny-text-") as folder:
            text = TextEncoder.tiny(folder, seed=seed)
        torch.manual_seed(seed)
        camera_wan = CameraWan.from_config(CameraWanConfig(**TINY_CAMERA_WAN))
        vae = WanVAE.tiny(seed=seed)
        lrdm = LRDM(lrdm_preset("tiny", encoder=lrdm_encoder, **TINY_LRDM))
        aligner = LatentAligner(AlignerConfig(**TINY_ALIGNER))
        aligner.set_normalisation(vae.mean, vae.std)
        gen = torch.Generator().manual_seed(seed)
        _randomise_zero_inits(camera_wan.camera, gen)
        _randomise_zero_inits(lrdm, gen)
        sources = {"kind": "tiny random weights (untrained)", "seed": seed, "lrdm_encoder": lrdm_encoder}
        return cls(text, camera_wan, vae, lrdm, aligner, untrained=True, sources=sources, **kw)

    @classmethod
    def from_config(cls, cfg: GenerateConfig) -> Diff4SplatPipeline:
        """The pipeline ``cfg`` describes: tiny random weights, or every model from its local path in ``cfg.models``."""
        device = resolve_device(cfg.device)
        lm = cfg.low_memory
        kw = {
            "decoder": cfg.decoder,
            "device": device,
            "offload": lm.offload,
            "text_encoder_on_cpu": lm.text_encoder_on_cpu,
            "render_backend": cfg.render.backend,
        }
        cfg = public.resolve_config(cfg)
        if cfg.tiny and cfg.layout == "public":
            pipe = public.tiny_public(cls, seed=cfg.seed, **kw)
        elif cfg.tiny:
            pipe = cls.tiny(seed=cfg.seed, lrdm_encoder=cfg.lrdm.tiny_encoder, **kw)
        else:
            pipe = cls._load(cfg, device, kw)
        if lm.vae_tiling:
            pipe.enable_vae_tiling(*lm.vae_tile)
        if cfg.compile:
            pipe.compile()
        return pipe

    def compile(self) -> None:
        """``torch.compile`` every CameraWan transformer block in place (regional: one graph, reused by all blocks;
        the sampling loop's shapes are fixed, so it compiles once per frame size). Weights and keys are unchanged."""
        from diff4splat.models.parallel import compile_in_place

        for block in self.camera_wan.transformer.blocks:
            compile_in_place(block)

    @classmethod
    def _load(cls, cfg: GenerateConfig, device: torch.device, kw: dict) -> Diff4SplatPipeline:
        from diff4splat.models.text import TextEncoder
        from diff4splat.models.wan_vae import WanVAE
        from diff4splat.pipelines.reconstruction import load_lrdm

        m = cfg.models
        check_model_paths(cfg)
        bf16 = device.type == "cuda" and cfg.dtype != "float32"
        dtype = torch.bfloat16 if bf16 else torch.float32
        home = torch.device("cpu") if cfg.low_memory.offload else device
        text_home = torch.device("cpu") if cfg.low_memory.text_encoder_on_cpu else home
        text = TextEncoder.from_pretrained(
            m.text_encoder, device=text_home, dtype=dtype if text_home.type == "cuda" else None
        )
        camera_wan = CameraWan.from_config(replace(m.camera_wan, dtype="bfloat16" if bf16 else "float32"), device=home)
        vae = WanVAE.from_pretrained(m.vae, torch_dtype=dtype)
        lrdm = load_lrdm(m.lrdm, home)
        aligner = public.load_aligner(m.aligner) if cfg.decoder == "tiny_vae" else None
        if aligner is not None and bf16:
            aligner.to(torch.bfloat16)
        cw = m.camera_wan
        sources = {
            "layout": cfg.layout,
            "weights": public.weight_files(cfg, cw),
            "text_encoder": m.text_encoder,
            "vae": m.vae,
            "lrdm": m.lrdm,
            "aligner": m.aligner if aligner is not None else None,
            "camera_wan": {
                "arch": cw.arch,
                "init": cw.init,
                "pretrained_path": cw.pretrained_path,
                "original_paths": cw.original_paths,
                "camera_weights": cw.camera_weights,
            },
        }
        if not cw.camera_weights:
            log.warning(
                "models.camera_wan.camera_weights is null: the camera branch is untrained (zero), so the video "
                "ignores the trajectory"
            )
        return cls(text, camera_wan, vae, lrdm, aligner, sources=sources, **kw)

    def enable_vae_tiling(self, tile: int = 256, stride: int = 192) -> None:
        """Tiled Wan VAE encode/decode (``tile`` x ``tile`` pixel tiles every ``stride`` pixels): less memory."""
        self.vae.vae.enable_tiling(
            tile_sample_min_height=tile,
            tile_sample_min_width=tile,
            tile_sample_stride_height=stride,
            tile_sample_stride_width=stride,
        )

    # --- properties ---------------------------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Frame sizes must be multiples of this (the DiT's token size and the LRDM's patch / latent cell; a ``vggt``
        LRDM reads the frames resized to its own size, so it adds no constraint)."""
        unit = self.vae.stride_s * self.camera_wan.patch_size[1]
        return unit if self.lrdm.config.encoder == "vggt" else math.lcm(unit, size_multiple(self.lrdm))

    @property
    def autocast(self) -> bool:
        return self.device.type == "cuda" and next(self.camera_wan.parameters()).dtype == torch.bfloat16

    @contextlib.contextmanager
    def _placed(self, module: nn.Module | None, device: torch.device | None = None) -> Iterator[None]:
        """With ``offload``: ``module`` on the device for the block, back on the CPU after it."""
        if module is None or not self.offload:
            yield
            return
        module.to(device or self.device)
        try:
            yield
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # --- running ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        image: Tensor,  # [3, H, W] in [0, 1] at the model size (``inputs.fit_frames``)
        c2w: Tensor,  # [F, 4, 4] OpenCV c2w in scene units (the camera model's), camera 0 = identity; F = 1 + 4k
        fxfycxcy: Tensor,  # [F, 4] normalised intrinsics of the model frame
        times: Tensor | None = None,  # [F] in [0, 1]; default linspace
        prompt: str = "",
        negative_prompt: str | None = None,  # None: Wan's standard negative prompt
        sampling: SamplingConfig | None = None,  # steps, CFG scale, shift, seed
        query_times: Tensor | None = None,  # [T] in [0, 1]; default: one per latent frame
        lrdm_input_frames: int | None = None,  # rgb LRDM: frames it reads, evenly spaced (None: all)
        translation_scale: float | None = None,  # scene_c2w units -> LRDM units; None: automatic (pipelines.scale)
        scene_c2w: Tensor | None = None,  # [F, 4, 4] c2w in the units the scene comes out in (None: c2w's)
        prune_threshold: float | None = None,  # None: the LRDM's
        stages: Stages | None = None,
    ) -> Generation:
        from diff4splat.models.text import NEGATIVE_PROMPT

        sampling = sampling or SamplingConfig()
        stages = stages or Stages(self.device, progress=False)
        f, (h, w) = c2w.shape[0], image.shape[-2:]
        unit = self.size_multiple
        if h % unit or w % unit:
            raise InputError(f"height x width = {h}x{w}: both must be multiples of {unit} for these models")
        if fxfycxcy.shape != (f, 4):
            raise ValueError(f"{f} cameras but intrinsics {tuple(fxfycxcy.shape)}")
        num_latent = self.vae.check_frames(f)
        times = torch.linspace(0, 1, f) if times is None else times.float().cpu()
        if query_times is None:
            query_times = times[torch.linspace(0, f - 1, num_latent).round().long()]
        dev = self.device
        guided = sampling.guided  # never for mode=distilled

        # 1. Prompt (and negative prompt) embeddings
        with stages("text"), self._placed(self.text_encoder, self.text_device):
            prompts = [prompt] + ([NEGATIVE_PROMPT if negative_prompt is None else negative_prompt] if guided else [])
            embeds = self.text_encoder.encode(prompts).to(dev)
        if self.camera_wan.condition_channels:  # the Fun release: its conditioning and its loop (pipelines.public)
            latents = public.fun_latents(self, image, c2w, fxfycxcy, embeds, sampling, stages)
        else:
            # 2. The first frame's clean latent
            with stages("encode"), self._placed(self.vae):
                cond = self.vae.encode(image[None, None].to(dev))  # [1, C, 1, h, w]
            # 3. Camera-controlled flow-matching sampling (one bar tick per denoising forward)
            with stages("sampling", total=sampling.steps, unit="step") as bar, self._placed(self.camera_wan):

                def tick(*_: Any) -> None:  # a forward hook must return None (a value would replace the output)
                    bar.update(1)

                hook = self.camera_wan.register_forward_hook(tick)
                try:
                    plucker = plucker_for_latents(c2w[None].to(dev), fxfycxcy[None].to(dev), h, w)
                    latents = sample_latents(
                        self.camera_wan, cond, num_latent, embeds[:1], embeds[1:] if guided else None, plucker, sampling
                    )
                finally:
                    hook.remove()
        if not torch.isfinite(latents).all():
            raise RuntimeError("sampling produced non-finite latents (check the weights and the dtype)")
        # 4. Latents -> frames
        with stages("decode"):
            video = self.decode(latents)[0]  # [F, 3, H, W]
        # 5. LRDM -> deformable Gaussians in the trajectory's units
        with stages("lrdm"):
            scene, frames = self.reconstruct(
                latents,
                video,
                (c2w if scene_c2w is None else scene_c2w).float(),
                fxfycxcy.float(),
                times,
                query_times,
                lrdm_input_frames,
                prune_threshold,
                translation_scale,
            )
        return Generation(latents[0], video, scene, frames, dict(stages.timings))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:  # [B, C, T, h, w] -> [B, F, 3, H, W] in [0, 1]
        """Latents to frames with the Wan VAE decoder or the aligned TinyVAE (``decoder``)."""
        if self.decoder == "wan":
            with self._placed(self.vae):
                return self.vae.decode(latents.to(self.device)).float()
        with self._placed(self.aligner), torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            return self.aligner.decode(latents.to(self.device)).float().clamp(0, 1)

    @torch.no_grad()
    def reconstruct(
        self,
        latents: Tensor,  # [1, C, T, h, w]
        video: Tensor,  # [F, 3, H, W]
        c2w: Tensor,  # [F, 4, 4] canonical, in the trajectory's units
        fxfycxcy: Tensor,  # [F, 4]
        times: Tensor,  # [F]
        query_times: Tensor,  # [T_q]
        input_frames: int | None = None,
        prune_threshold: float | None = None,
        translation_scale: float | None = None,  # None: automatic rescale to LRDM units (`pipelines.scale`)
    ) -> tuple[Reconstruction, Tensor]:
        """The LRDM on the latents (``latent`` encoder) or on ``input_frames`` evenly spaced frames (``rgb``), with
        the cameras rescaled to its units and the Gaussians back to ``c2w``'s (`rescaled_reconstruction`)."""
        cfg = self.lrdm.config
        dev, f = self.device, c2w.shape[0]
        cams, fx, t, q = c2w.to(dev), fxfycxcy.to(dev), times.float().to(dev), query_times.float().to(dev)
        if cfg.encoder == "latent" or input_frames is None or input_frames >= f:
            idx = torch.arange(f)
        else:
            idx = torch.linspace(0, f - 1, max(1, input_frames)).round().long().unique()
        i = idx.to(dev)
        frames = None
        if cfg.encoder != "latent":
            frames = video[i].to(dev)
            size = native_size(self.lrdm, *frames.shape[-2:])  # vggt: its 14-pixel grid (normalised K unchanged)
            if size is not None and size != tuple(frames.shape[-2:]):
                frames = F.interpolate(frames.float(), size=size, mode="bicubic", antialias=True).clamp(0, 1)

        def run(lrdm_cams: Tensor, canonical_only: bool) -> DeformableGaussians:  # [F, 4, 4] in LRDM units
            with self._placed(self.lrdm), torch.autocast(dev.type, torch.bfloat16, enabled=self.autocast):
                if frames is None:
                    out = self.lrdm(
                        lrdm_cams[None],
                        fx[None],
                        t[None],
                        q[None],
                        latents=latents.to(dev),
                        image_size=tuple(video.shape[-2:]),
                        canonical_only=canonical_only,
                    )
                else:
                    out = self.lrdm(
                        lrdm_cams[i][None],
                        fx[i][None],
                        t[i][None],
                        q[None],
                        images=frames[None],
                        canonical_only=canonical_only,
                    )
            return out.gaussians.unbind()[0]  # unpruned

        gaussians, scale = rescaled_reconstruction(run, cams, translation_scale)
        threshold = cfg.prune_threshold if prune_threshold is None else prune_threshold
        gaussians = gaussians.prune(threshold) if threshold > 0 else gaussians
        return Reconstruction(gaussians, cams, fx, t, tuple(video.shape[-2:]), scale), idx

    @torch.no_grad()
    def render(
        self,
        scene: Reconstruction,
        c2w: Tensor,  # [V, 4, 4] in the scene's units
        fxfycxcy: Tensor,  # [V, 4]
        times: Tensor,  # [V]
        bar: Any = None,
        views_per_pass: int = RENDER_VIEWS_PER_PASS,
    ) -> tuple[Tensor, Tensor]:
        """View k = camera k at time k: RGB [V, 3, H, W] and depth [V, 1, H, W] (one progress tick per view).

        ``views_per_pass`` views are deformed to their times and rasterised in one batched call (the scene is shared,
        not copied: a batch of V scenes of one camera each), which replaces a kernel series, and gsplat's host
        synchronisations, per view by one per pass."""
        rgbs, depths = [], []
        dev = scene.c2w.device
        one_time = bool((times == times.flatten()[:1]).all())  # e.g. the novel orbit: deform once, V cameras
        c2w, fxfycxcy, times = c2w.to(dev).float(), fxfycxcy.to(dev).float(), times.to(dev).float()
        h, w = scene.image_size
        still = scene.gaussians.at(times[0]) if one_time else None
        for k in range(0, c2w.shape[0], views_per_pass):
            cams, fx = c2w[k : k + views_per_pass], fxfycxcy[k : k + views_per_pass]
            v = cams.shape[0]
            if still is not None:
                out = render(still, cams, fx, h, w, backend=self._views.backend)
                rgb, depth = out.rgb, out.depth  # [v, C, H, W]
            else:
                shared = scene.gaussians._map(lambda x, v=v: x.expand(v, *x.shape))  # [v, ...] views of one scene
                out = render(shared.at(times[k : k + v]), cams[:, None], fx[:, None], h, w, backend=self._views.backend)
                rgb, depth = out.rgb[:, 0], out.depth[:, 0]  # [v, 1, C, H, W] -> [v, C, H, W]
            rgbs.append(rgb.clamp(0, 1))
            depths.append(depth)
            if bar is not None:
                bar.update(v)
        return torch.cat(rgbs), torch.cat(depths)

    def describe(self) -> dict:
        """Model sources and architecture facts for ``meta.json``."""
        c = self.lrdm.config
        return {
            **self.sources,
            "untrained": self.untrained,
            "decoder": self.decoder,
            "lrdm_encoder": c.encoder,
            "lrdm_gaussian_stride": c.gaussian_stride,
            "lrdm_gaussian_frame_step": c.gaussian_frame_step,
            "dtype": str(next(self.camera_wan.parameters()).dtype).removeprefix("torch."),
            "device": str(self.device),
            "offload": self.offload,
            "text_device": str(self.text_device),
        }
