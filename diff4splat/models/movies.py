"""MoVieS's reconstruction model (its ``VGGSplaT``; Diff4Splat's released "LRDM"): posed, timed frames -> per-pixel
3D Gaussians and, per query time, their motion. Written from the released design so ``movies_ckpt.safetensors`` loads
strictly and the numbers match; `VGGSplat.from_vggt` starts it from ``facebook/VGGT-1B`` as MoVieS's training does.

1. **Tokens.** The DINOv2 encoder (``encoder``, VGGT's) embeds ImageNet-normalised frames; a per-pixel Plücker map
   (o x d, d) of each frame goes through a 14x14 patch conv and a GroupNorm(1) over all frames of a sample
   (``plucker_embed``, ``plucker_ln``; both zero-initialised) and is added to the patch tokens.
2. **Aggregator** (``backbone``, VGGT's, see `diff4splat.models.vggt.Aggregator`) with two more tokens per frame: a
   *pose token* = Linear(9 -> C) of VGGT's pose encoding of the W2C camera (translation, quaternion xyzw, FoV h, w)
   and an *input-time token* = Linear(20 -> C) of the frame's time embedding. Token order: [time, pose, camera,
   registers, patches].
3. **Heads** (`diff4splat.models.dpt.DPTHead` on layers 4, 11, 17, 23):
   - ``depth_head`` (VGGT's): z-depth (``exp``) + confidence, per input pixel;
   - ``splat_head``: colour 3·(sh+1)², scale 3, rotation 4, opacity 1 (+ confidence), raw, with an RGB shortcut;
   - ``motion_head`` (VGGT's point head + AdaLN on the query time): a world-space xyz offset (linear) + confidence;
   - ``motion_splat_head`` (AdaLN on the query time, the static attributes as shortcut): time-dependent attributes.
   The time-conditioned heads run once per query time; a pixel whose ‖offset‖ < 0.005 keeps its static attributes
   (0.005 as well for opacity).

Time embedding: ``[sin(t 2^k), cos(t 2^k)]`` for k = 0..9 (20 numbers), t in [0, 1].

What the outputs mean (`VGGSplat.forward`, `activate_gaussians`): every pixel of every input frame f is one Gaussian.
Its centre at input time t_f is the unprojection of its depth through the pixel centre with that frame's camera
(world frame of the given C2W). ``offset[:, q]`` is the world-space displacement that moves it to its position at
query time t_q (so xyz(t_q) = unproject(depth) + offset(t_q); there is no separate canonical time: each pixel's
Gaussian starts at its own frame's time). ``*_t[:, q]`` are the raw colour / scale / rotation / opacity at t_q
(re-predicted absolute values, not deltas; equal to the static ones for pixels that do not move).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff4splat.geometry.cameras import invert_c2w, plucker_rays
from diff4splat.geometry.rotations import (
    matrix_to_quat,
    quat_to_matrix,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
)
from diff4splat.models.dpt import DPTConfig, DPTHead, infer_dpt_config
from diff4splat.models.movies_gaussians import (
    GaussianActivation,
    _float32_geometry,
    activate_gaussians,
    deformable_gaussians,
)
from diff4splat.models.movies_keys import (
    _VGGT_UNUSED,
    CHECKPOINT_PREFIX,
    _new_parts,
    strip_checkpoint_prefix,
    vggt_key,
)
from diff4splat.models.vggt import (
    Aggregator,
    AggregatorConfig,
    DinoEncoder,
    EncoderConfig,
    dpt_layers,
    drop_track_head,
    infer_aggregator_config,
    infer_encoder_config,
    read_state_dict,
)
from diff4splat.weights import WeightsError, load_state_checked

log = logging.getLogger(__name__)

POSE_ENCODING_DIM = 9


def _gaussian_channels(sh_degree: int) -> int:
    return 3 * (sh_degree + 1) ** 2 + 3 + 4 + 1  # colour (SH), scale, rotation, opacity


def _gs_head(sh_degree: int, shortcut_dim: int, time_dim: int) -> DPTConfig:
    return DPTConfig(
        output_dim=_gaussian_channels(sh_degree) + 1, activation="linear", shortcut_dim=shortcut_dim, time_dim=time_dim
    )


@dataclass
class VGGSplatConfig:
    """Architecture of MoVieS's model. Defaults: the released dynamic model (``opt_dict["movies"]``) on VGGT-1B.
    The static model (``movies_static``): ``aggregator.time_dim = 0``, ``motion_head = motion_splat_head = None``."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    aggregator: AggregatorConfig = field(
        default_factory=lambda: AggregatorConfig(extra_dim=POSE_ENCODING_DIM, time_dim=20)
    )
    depth_head: DPTConfig = field(default_factory=lambda: DPTConfig(output_dim=2, activation="exp"))
    splat_head: DPTConfig = field(default_factory=lambda: _gs_head(0, shortcut_dim=3, time_dim=0))
    motion_head: DPTConfig | None = field(
        default_factory=lambda: DPTConfig(output_dim=4, activation="linear", time_dim=20)
    )
    motion_splat_head: DPTConfig | None = field(
        default_factory=lambda: _gs_head(0, shortcut_dim=_gaussian_channels(0), time_dim=20)
    )
    plucker: bool = True
    sh_degree: int = 0
    time_dim: int = 20  # sin-cos time embedding size (input-time token and the heads' AdaLN)
    mask_by_motion: float = 0.005  # pixels with ‖offset‖ below keep their static colour, scale, rotation
    mask_by_motion_opacity: float = 0.005  # ... and opacity
    activation: GaussianActivation = field(default_factory=GaussianActivation)


def time_embedding(t: Tensor, dim: int) -> Tensor:  # [...] in [0, 1] -> [..., dim]
    """MoVieS's NeRF-style embedding ``[sin(t 2^k) for k < dim/2, cos(t 2^k) for k < dim/2]``."""
    if dim % 2:
        raise ValueError(f"time_embedding: dim must be even, got {dim}")
    freqs = 2 ** torch.arange(dim // 2, dtype=t.dtype, device=t.device)
    angles = t[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def pose_encoding(c2w: Tensor, fxfycxcy: Tensor) -> Tensor:  # [..., 4, 4], [..., 4] -> [..., 9]
    """VGGT's ``absT_quaR_FoV`` encoding of the W2C camera with normalised intrinsics: (t 3, quaternion xyzw 4,
    2 atan(1 / (2 fy)), 2 atan(1 / (2 fx)))."""
    w2c = invert_c2w(c2w.float())
    quat = quat_wxyz_to_xyzw(matrix_to_quat(w2c[..., :3, :3]))
    fov_h = 2 * torch.atan(0.5 / fxfycxcy[..., 1].float())
    fov_w = 2 * torch.atan(0.5 / fxfycxcy[..., 0].float())
    return torch.cat([w2c[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1).to(c2w.dtype)


def pose_decoding(encoding: Tensor) -> tuple[Tensor, Tensor]:  # [..., 9] -> c2w [..., 4, 4], fxfycxcy [..., 4]
    """The inverse of `pose_encoding` (and VGGT's camera-head output to our cameras): the W2C translation and xyzw
    quaternion -> OpenCV c2w, the fields of view -> normalised focal lengths ``0.5 / tan(fov / 2)`` with the principal
    point at the image centre (VGGT's ``pose_encoding_to_extri_intri``, divided by the image size)."""
    enc = encoding.float()
    rot = quat_to_matrix(quat_xyzw_to_wxyz(F.normalize(enc[..., 3:7], dim=-1)))
    w2c = torch.zeros(*enc.shape[:-1], 4, 4, dtype=enc.dtype, device=enc.device)
    w2c[..., :3, :3], w2c[..., :3, 3], w2c[..., 3, 3] = rot, enc[..., :3], 1.0
    fy, fx = 0.5 / torch.tan(enc[..., 7] / 2), 0.5 / torch.tan(enc[..., 8] / 2)
    fxfycxcy = torch.stack([fx, fy, torch.full_like(fx, 0.5), torch.full_like(fx, 0.5)], dim=-1)
    return invert_c2w(w2c), fxfycxcy


def movies_config(
    encoder: EncoderConfig,
    aggregator: AggregatorConfig,
    depth_head: DPTConfig,
    *,
    dynamic: bool = True,
    sh_degree: int = 0,
    time_dim: int = 20,
    motion: DPTConfig | None = None,
    plucker: bool = True,
) -> VGGSplatConfig:
    """MoVieS's architecture on a VGGT of the given sizes (``VGGSplaT.__init__`` with ``opt_dict["movies"]``, or
    ``"movies_static"`` when not ``dynamic``): a pose token on the aggregator (and an input-time token when dynamic);
    the Gaussian heads sized as the depth head; the motion head as ``motion`` (VGGT's point head) or, when not given,
    the depth head's sizes with 3 + 1 linear outputs."""
    aggregator = dataclasses.replace(aggregator, extra_dim=POSE_ENCODING_DIM, time_dim=time_dim if dynamic else 0)
    sizes = {k: getattr(depth_head, k) for k in ("dim_in", "patch_size", "features", "out_channels", "layers")}
    sizes["head_features"] = depth_head.head_features
    gaussians = dict(sizes, output_dim=_gaussian_channels(sh_degree) + 1, activation="linear")
    motion_head = motion_splat_head = None
    if dynamic:
        motion = motion or DPTConfig(**sizes, output_dim=4, activation="linear")
        motion_head = dataclasses.replace(motion, activation="linear", time_dim=time_dim)
        motion_splat_head = DPTConfig(**gaussians, shortcut_dim=_gaussian_channels(sh_degree), time_dim=time_dim)
    return VGGSplatConfig(
        encoder=encoder,
        aggregator=aggregator,
        depth_head=dataclasses.replace(depth_head, activation="exp"),
        splat_head=DPTConfig(**gaussians, shortcut_dim=3),
        motion_head=motion_head,
        motion_splat_head=motion_splat_head,
        plucker=plucker,
        sh_degree=sh_degree,
        time_dim=time_dim,
    )


class PluckerEmbed(nn.Module):
    """Per-frame patch conv of a Plücker map (a (1, p, p) Conv3d, as MoVieS's ``FeatureEmbed("3d")``)."""

    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.net = nn.Conv3d(6, embed_dim, kernel_size=(1, patch_size, patch_size), stride=(1, patch_size, patch_size))

    def forward(self, plucker: Tensor) -> Tensor:  # [B, 6, F, H, W] -> [B, C, F, H/p, W/p]
        return self.net(plucker)


class VGGSplat(nn.Module):
    """MoVieS's VGGSplaT. Parameter names are the release's (``movies_ckpt.safetensors`` minus its ``backbone.``)."""

    def __init__(self, config: VGGSplatConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VGGSplatConfig()
        embed_dim, patch = config.encoder.embed_dim, config.encoder.patch_size
        if config.aggregator.embed_dim != embed_dim:
            raise ValueError("VGGSplatConfig: the encoder and aggregator widths must match")
        if config.splat_head.output_dim != _gaussian_channels(config.sh_degree) + 1:
            raise ValueError(f"VGGSplatConfig: splat_head.output_dim does not match sh_degree {config.sh_degree}")
        if (config.motion_head is None) != (config.motion_splat_head is None):
            raise ValueError("VGGSplatConfig: motion_head and motion_splat_head come together")
        if config.plucker:
            self.plucker_embed = PluckerEmbed(embed_dim, patch)
            self.plucker_ln = nn.GroupNorm(1, embed_dim)
            for p in (*self.plucker_embed.parameters(), *self.plucker_ln.parameters()):
                nn.init.zeros_(p)
        self.encoder = DinoEncoder.from_config(config.encoder)
        self.backbone = Aggregator.from_config(config.aggregator, patch_size=patch)
        self.depth_head = DPTHead.from_config(config.depth_head)
        self.splat_head = DPTHead.from_config(config.splat_head)
        self.motion_head = DPTHead.from_config(config.motion_head) if config.motion_head else None
        self.motion_splat_head = DPTHead.from_config(config.motion_splat_head) if config.motion_splat_head else None

    @property
    def is_dynamic(self) -> bool:
        return self.motion_head is not None

    def dpt_heads(self) -> list[DPTHead]:
        return [
            h for h in (self.depth_head, self.splat_head, self.motion_head, self.motion_splat_head) if h is not None
        ]

    def set_head_checkpointing(self, enabled: bool) -> None:
        """Activation checkpointing of every DPT head pass (`DPTHead.checkpointing`)."""
        for head in self.dpt_heads():
            head.checkpointing = enabled

    def forward(
        self,
        images: Tensor,  # [B, F, 3, H, W] in [0, 1], H and W multiples of the patch size (14)
        c2w: Tensor,  # [B, F, 4, 4] OpenCV camera-to-world
        fxfycxcy: Tensor,  # [B, F, 4] normalised intrinsics (fx/W, fy/H, cx/W, cy/H)
        input_times: Tensor | None = None,  # [B, F] in [0, 1]; needed with an input-time token
        query_times: Tensor | None = None,  # [B, Q] in [0, 1]; needed by the dynamic model
        frames_chunk_size: int | None = 8,
        queries_per_pass: int | None = 1,
        canonical_only: bool = False,  # the static outputs alone: the time-conditioned heads are skipped
    ) -> dict[str, Tensor]:
        """Raw per-pixel outputs (activate them with `activate_gaussians`):

        - ``depth`` [B, F, 1, H, W] (z-depth, already ``exp``: positive, unclamped), ``depth_conf`` [B, F, 1, H, W];
        - ``color`` [B, F, 3(sh+1)², H, W], ``scale`` [B, F, 3, H, W], ``rotation`` [B, F, 4, H, W] (wxyz, not
          normalised), ``opacity`` [B, F, 1, H, W], ``conf`` [B, F, 1, H, W]: the static Gaussians, pre-activation;
        - dynamic model only (and not ``canonical_only``), per query time q: ``offset`` [B, Q, F, 3, H, W] (world-space displacement of each
          pixel's Gaussian from its frame's time to t_q), ``offset_conf`` [B, Q, F, 1, H, W], and ``color_t``,
          ``scale_t``, ``rotation_t``, ``opacity_t``, ``conf_t`` [B, Q, F, C, H, W] (raw attributes at t_q).

        The time-conditioned heads run once per query time (``queries_per_pass=1``, as the reference), or on
        ``queries_per_pass`` query times at a time (None: all) as one batch: the same numbers up to rounding, fewer
        and larger kernels, activations for that many times at once.
        """
        cfg = self.config
        batch, frames, _, height, width = images.shape
        # 1. Conditioning: pose encoding, time embeddings
        with _float32_geometry(images.device):
            pose = pose_encoding(c2w, fxfycxcy) if cfg.aggregator.extra_dim > 0 else None
            plucker = plucker_rays(c2w.float(), fxfycxcy.float(), height, width) if cfg.plucker else None
        input_emb = None
        if cfg.aggregator.time_dim > 0:
            if input_times is None:
                raise ValueError("VGGSplat: this model has an input-time token; pass input_times [B, F]")
            input_emb = time_embedding(input_times, cfg.aggregator.time_dim)
        query_emb = None
        if self.is_dynamic and not canonical_only:
            if query_times is None:
                raise ValueError("VGGSplat: the dynamic model needs query_times [B, Q]")
            query_emb = time_embedding(query_times, cfg.time_dim)  # [B, Q, time_dim]
        # inputs in the weights' dtype (a no-op in float32 and under autocast; bf16 weights run without autocast)
        dtype = self.encoder.patch_embed.proj.weight.dtype
        pose = pose.to(dtype) if pose is not None else None
        input_emb = input_emb.to(dtype) if input_emb is not None else None
        # 2. Patch tokens (+ Plücker embedding)
        tokens = self.encoder(self.backbone.normalize(images).flatten(0, 1).to(dtype))  # [B*F, h*w, C]
        if cfg.plucker:
            plucker = plucker.to(dtype)  # [B, F, 6, H, W]
            emb = self.plucker_ln(self.plucker_embed(plucker.transpose(1, 2)))  # [B, C, F, h, w]
            tokens = tokens + emb.permute(0, 2, 3, 4, 1).reshape(batch * frames, -1, emb.shape[1])
        # 3. Aggregator: only the layers the heads read
        keep = set(self.depth_head.layers) | set(self.splat_head.layers)
        if query_emb is not None:
            keep |= set(self.motion_head.layers) | set(self.motion_splat_head.layers)
        layers, start = self.backbone(images, patch_tokens=tokens, extra=pose, time=input_emb, keep_layers=keep)
        # 4. Static heads
        size = (height, width)
        out: dict[str, Tensor] = {}
        depth, depth_conf = self.depth_head(layers, start, size, frames_chunk_size=frames_chunk_size)
        out["depth"], out["depth_conf"] = depth.permute(0, 1, 4, 2, 3), depth_conf[:, :, None]
        gaussians, conf = self.splat_head(layers, start, size, shortcut=images, frames_chunk_size=frames_chunk_size)
        gaussians = gaussians.permute(0, 1, 4, 2, 3)  # [B, F, 11, H, W]
        split = [3 * (cfg.sh_degree + 1) ** 2, 3, 4, 1]
        for name, value in zip(("color", "scale", "rotation", "opacity"), gaussians.split(split, dim=2)):
            out[name] = value
        out["conf"] = conf[:, :, None]
        if query_emb is None:
            return out
        # 5. Per query time (or group of query times): motion and time-dependent attributes
        per_query: dict[str, list[Tensor]] = {k: [] for k in ("offset", "offset_conf", *_TIME_KEYS)}
        num_queries = query_emb.shape[1]
        step = num_queries if not queries_per_pass else queries_per_pass
        for q0 in range(0, num_queries, step):
            # one time: the reference's [B, time_dim] call; several: [B, k, time_dim], one batch of B x k
            emb = query_emb[:, q0] if step == 1 else query_emb[:, q0 : q0 + step]
            motion, motion_conf = self.motion_head(
                layers, start, size, time_embedding=emb, frames_chunk_size=frames_chunk_size
            )
            attrs, attrs_conf = self.motion_splat_head(
                layers, start, size, shortcut=gaussians, time_embedding=emb, frames_chunk_size=frames_chunk_size
            )
            if step == 1:  # -> [B, 1, F, ...] like the batched form
                motion, motion_conf, attrs, attrs_conf = (x[:, None] for x in (motion, motion_conf, attrs, attrs_conf))
            offset = motion.permute(0, 1, 2, 5, 3, 4)  # [B, k, F, 3, H, W]
            split_attrs = attrs.permute(0, 1, 2, 5, 3, 4).split(split, dim=3)
            values = dict(zip(_TIME_KEYS, (*split_attrs, attrs_conf[:, :, :, None])))
            # pixels that do not move keep their static attributes
            norm = offset.norm(dim=3, keepdim=True)
            moving = (norm >= cfg.mask_by_motion).to(offset.dtype)
            moving_opacity = (norm >= cfg.mask_by_motion_opacity).to(offset.dtype)
            for key, static in zip(_TIME_KEYS, ("color", "scale", "rotation", "opacity", "conf")):
                m = moving_opacity if key == "opacity_t" else moving
                per_query[key].append(m * values[key] + (1 - m) * out[static][:, None])
            per_query["offset"].append(offset)
            per_query["offset_conf"].append(motion_conf[:, :, :, None])
        out.update({k: torch.cat(v, dim=1) for k, v in per_query.items()})
        return out

    # -- config inference and loading ---------------------------------------------------------------------------------

    @classmethod
    def config_from_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        *,
        encoder_num_heads: int | None = None,
        layers: Sequence[int] | None = None,
        activation: GaussianActivation | None = None,
    ) -> VGGSplatConfig:
        """The architecture of a MoVieS state dict (with or without the checkpoint's ``backbone.`` prefix), from its
        tensor shapes. Not in the shapes: the encoder's heads (default head dim 64), the DPT layers (default
        `diff4splat.models.vggt.dpt_layers`: VGGT-1B's at 24 layers) and the renderer activations."""
        sd = strip_checkpoint_prefix(state_dict)
        encoder = infer_encoder_config(sd, "encoder.", num_heads=encoder_num_heads)
        aggregator = infer_aggregator_config(sd, "backbone.")
        layers = dpt_layers(aggregator.depth) if layers is None else tuple(layers)
        patch = encoder.patch_size
        heads = {}
        for name, act in (("depth_head", "exp"), ("splat_head", "linear"), ("motion_head", "linear")):
            heads[name] = None
            if f"{name}.norm.weight" in sd:
                heads[name] = infer_dpt_config(sd, f"{name}.", patch_size=patch, layers=layers, activation=act)
        heads["motion_splat_head"] = None
        if "motion_splat_head.norm.weight" in sd:
            heads["motion_splat_head"] = infer_dpt_config(sd, "motion_splat_head.", patch_size=patch, layers=layers)
        if heads["depth_head"] is None or heads["splat_head"] is None:
            raise WeightsError("not a MoVieS state dict: depth_head / splat_head tensors are missing")
        colour = heads["splat_head"].output_dim - 1 - (3 + 4 + 1)
        sh_degree = round((colour / 3) ** 0.5) - 1
        if 3 * (sh_degree + 1) ** 2 != colour:
            raise WeightsError(f"splat_head predicts {colour} colour channels: not 3 (sh_degree + 1)^2")
        time_dim = heads["motion_head"].time_dim if heads["motion_head"] else aggregator.time_dim or 20
        return VGGSplatConfig(
            encoder=encoder,
            aggregator=aggregator,
            depth_head=heads["depth_head"],
            splat_head=heads["splat_head"],
            motion_head=heads["motion_head"],
            motion_splat_head=heads["motion_splat_head"],
            plucker="plucker_embed.net.weight" in sd,
            sh_degree=sh_degree,
            time_dim=time_dim,
            activation=activation or GaussianActivation(),
        )

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], source: str = "state dict", **facts) -> VGGSplat:
        """Built from the shapes of ``state_dict`` and loaded from it strictly (mismatches name the tensors)."""
        sd = strip_checkpoint_prefix(state_dict)
        model = cls(cls.config_from_state_dict(sd, **facts))
        load_state_checked(model, sd, source, "MoVieS")
        return model

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **facts) -> VGGSplat:
        """``movies_ckpt.safetensors`` (or a ``torch.load(weights_only=True)`` state dict of this model)."""
        return cls.from_state_dict(read_state_dict(path, "MoVieS checkpoint"), source=str(path), **facts)

    @classmethod
    def config_from_vggt(
        cls,
        vggt_state_dict: Mapping[str, Tensor],
        *,
        dynamic: bool = True,
        sh_degree: int = 0,
        time_dim: int = 20,
        encoder_num_heads: int | None = None,
        layers: Sequence[int] | None = None,
    ) -> VGGSplatConfig:
        """MoVieS's architecture on the VGGT of ``vggt_state_dict`` (sizes from its tensor shapes; the motion head
        as VGGT's point head)."""
        encoder = infer_encoder_config(vggt_state_dict, "aggregator.patch_embed.", num_heads=encoder_num_heads)
        aggregator = infer_aggregator_config(vggt_state_dict, "aggregator.")
        layers = dpt_layers(aggregator.depth) if layers is None else tuple(layers)
        patch = encoder.patch_size
        depth = infer_dpt_config(vggt_state_dict, "depth_head.", patch_size=patch, layers=layers, activation="exp")
        motion = None
        if dynamic:
            motion = infer_dpt_config(vggt_state_dict, "point_head.", patch_size=patch, layers=layers)
        return movies_config(
            encoder, aggregator, depth, dynamic=dynamic, sh_degree=sh_degree, time_dim=time_dim, motion=motion
        )

    @classmethod
    def from_vggt(
        cls,
        vggt_state_dict: Mapping[str, Tensor],
        source: str = "VGGT state dict",
        *,
        dynamic: bool = True,
        sh_degree: int = 0,
        time_dim: int = 20,
        encoder_num_heads: int | None = None,
        layers: Sequence[int] | None = None,
    ) -> VGGSplat:
        """MoVieS's initialisation: a new model sized after a VGGT checkpoint, with every tensor VGGT has loaded
        strictly (encoder, aggregator, depth head, and the point head as the motion head); the new parts initialised
        as the reference does (Plücker embedding and the heads' AdaLN zero, the rest PyTorch's default), listed in
        one log line. VGGT's camera and track heads are not used."""
        vggt = drop_track_head(vggt_state_dict, source)
        config = cls.config_from_vggt(
            vggt,
            dynamic=dynamic,
            sh_degree=sh_degree,
            time_dim=time_dim,
            encoder_num_heads=encoder_num_heads,
            layers=layers,
        )
        model = cls(config)
        model.load_vggt(vggt, source)
        return model

    def load_vggt(self, vggt_state_dict: Mapping[str, Tensor], source: str = "VGGT state dict") -> None:
        """Copy every tensor this model shares with VGGT (strict: each must be in ``vggt_state_dict`` with the same
        shape, and every VGGT tensor must be used, apart from the camera and track heads, and the point head in the
        static model). Other tensors are left as they are and reported as new."""
        vggt = drop_track_head(vggt_state_dict, source)
        own = self.state_dict()
        loaded, new, missing, shapes = {}, [], [], []
        for key in own:
            src = vggt_key(key)
            if src is None:
                new.append(key)
            elif src not in vggt:
                missing.append(src)
            elif vggt[src].shape != own[key].shape:
                shapes.append(f"{src} {tuple(vggt[src].shape)} (model {key} {tuple(own[key].shape)})")
            else:
                loaded[key] = vggt[src]
        used = {vggt_key(k) for k in loaded}
        unused_parts = _VGGT_UNUSED if self.is_dynamic else (*_VGGT_UNUSED, "point_head.")
        unexpected = sorted(k for k in vggt if k not in used and not k.startswith(unused_parts))
        if missing or unexpected or shapes:
            raise WeightsError(
                f"MoVieS from VGGT: {source}: the VGGT weights do not match: missing tensors {missing[:8]}, "
                f"unexpected tensors {unexpected[:8]}, shape mismatches {shapes[:8]}"
            )
        self.load_state_dict(loaded, strict=False)
        log.info(
            "MoVieS from VGGT %s: loaded %d tensors; new (initialised as MoVieS does): %s; unused VGGT parts: %s",
            source,
            len(loaded),
            ", ".join(_new_parts(new)),
            ", ".join(sorted({k.split(".")[0] for k in vggt if k.startswith(unused_parts)})) or "none",
        )


_TIME_KEYS = ("color_t", "scale_t", "rotation_t", "opacity_t", "conf_t")


__all__ = [
    "CHECKPOINT_PREFIX",
    "GaussianActivation",
    "PluckerEmbed",
    "VGGSplat",
    "VGGSplatConfig",
    "activate_gaussians",
    "deformable_gaussians",
    "movies_config",
    "pose_decoding",
    "pose_encoding",
    "strip_checkpoint_prefix",
    "time_embedding",
    "vggt_key",
]
