"""Gaussian scenes in memory: static ``Gaussians`` and time-deformable ``DeformableGaussians``.

Attributes are held **activated** (what the renderer consumes): linear scales, opacities in [0, 1], unit wxyz
quaternions, RGB colours in [0, 1] or spherical-harmonics coefficients (3DGS convention: ``rgb = 0.5 + sum_k c_k
Y_k(d)``). All fields share optional leading batch dimensions ``[...]`` (e.g. one scene per batch element).

Deformation (the paper's): at query time ``t``, ``μ_t = μ + Δμ_t``, ``q_t = q ⊗ Δq_t`` (Hamilton product, the
canonical rotation first, then the delta in the Gaussian's local frame) and ``s_t = s · exp(Δs_t)`` (``Δs`` is a
log-space offset). Deltas are stored for a set of query times; ``at(t)`` matches ``t`` to them (see there).
Opacity and colour may change over time too (MoVieS re-predicts them for the Gaussians that move): then
``opacities_t`` / ``colors_t`` hold their absolute values at every query time; None means the canonical's at all times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diff4splat.geometry.rotations import quat_multiply, quat_normalize

__all__ = ["DEFAULT_PRUNE_THRESHOLD", "DeformableGaussians", "Gaussians"]

DEFAULT_PRUNE_THRESHOLD = 0.005


def _check(name: str, value: Tensor, expected: tuple[int | str, ...], batch_shape: torch.Size) -> None:
    """Raise a clear error unless ``value.shape == batch_shape + expected`` ('N', 'K', 'T' match anything)."""
    shape = tuple(value.shape)
    want = tuple(batch_shape) + expected
    ok = len(shape) == len(want) and all(isinstance(w, str) or s == w for s, w in zip(shape, want))
    if not ok:
        pretty = "[" + ", ".join(str(w) for w in (("...",) + expected)) + "]"
        raise ValueError(f"{name}: expected shape {pretty} with batch shape {tuple(batch_shape)}, got {shape}")


@dataclass
class Gaussians:
    """A static set of 3D Gaussians with activated attributes.

    ``colors`` is RGB ``[..., N, 3]`` (then ``sh_degree is None``) or SH coefficients ``[..., N, K, 3]`` with
    ``K = (sh_degree + 1) ** 2``.
    """

    means: Tensor  # [..., N, 3]
    quats: Tensor  # [..., N, 4] wxyz
    scales: Tensor  # [..., N, 3] linear (activated)
    opacities: Tensor  # [..., N] in [0, 1]
    colors: Tensor  # [..., N, 3] RGB or [..., N, K, 3] SH

    def __post_init__(self) -> None:
        if self.means.dim() < 2 or self.means.shape[-1] != 3:
            raise ValueError(f"means: expected shape [..., N, 3], got {tuple(self.means.shape)}")
        batch, n = self.means.shape[:-2], self.means.shape[-2]
        _check("quats", self.quats, (n, 4), batch)
        _check("scales", self.scales, (n, 3), batch)
        _check("opacities", self.opacities, (n,), batch)
        if self.colors.dim() == self.means.dim():
            _check("colors", self.colors, (n, 3), batch)
        else:
            _check("colors", self.colors, (n, "K", 3), batch)
            k = self.colors.shape[-2]
            if round(k**0.5) ** 2 != k:
                raise ValueError(f"colors: SH coefficients need K = (degree + 1)^2 entries, got K = {k}")

    # -- shape ---------------------------------------------------------------------------------------------------------
    @property
    def batch_shape(self) -> torch.Size:
        """Leading batch dimensions ``[...]``."""
        return self.means.shape[:-2]

    @property
    def num_gaussians(self) -> int:
        """N, the number of Gaussians (per batch element)."""
        return self.means.shape[-2]

    @property
    def sh_degree(self) -> int | None:
        """SH degree of ``colors``, or None when they are RGB."""
        if self.colors.dim() == self.means.dim():
            return None
        return round(self.colors.shape[-2] ** 0.5) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    # -- tensor plumbing -----------------------------------------------------------------------------------------------
    def _map(self, fn) -> Gaussians:
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def to(self, *args, **kwargs) -> Gaussians:
        """``Tensor.to`` on every field (device and/or dtype)."""
        return self._map(lambda x: x.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self._map(lambda x: x.detach())

    def index(self, idx: Tensor | slice) -> Gaussians:
        """Select Gaussians along N (a bool mask or indices over the N axis; unbatched or shared across the batch)."""
        nd = len(self.batch_shape)
        lead = (slice(None),) * nd
        return self._map(lambda x: x[lead + (idx,)])

    def unbind(self) -> list[Gaussians]:
        """Split the first batch dimension into a list."""
        if not self.batch_shape:
            raise ValueError("unbind: these Gaussians have no batch dimension")
        return [
            Gaussians(*parts) for parts in zip(*(getattr(self, f.name).unbind(0) for f in dataclasses.fields(self)))
        ]

    @staticmethod
    def stack(items: Sequence[Gaussians]) -> Gaussians:
        """Stack scenes with the same N into a new leading batch dimension."""
        return Gaussians(*(torch.stack([getattr(g, f.name) for g in items]) for f in dataclasses.fields(Gaussians)))

    @staticmethod
    def cat(items: Sequence[Gaussians]) -> Gaussians:
        """Concatenate along N (e.g. the per-frame Gaussians of one scene into a single set)."""
        if not items:
            raise ValueError("Gaussians.cat: empty sequence")
        degrees = {g.sh_degree for g in items}
        if len(degrees) > 1:
            raise ValueError(f"Gaussians.cat: mixed colour kinds / SH degrees {degrees}")
        nd = len(items[0].batch_shape)
        return Gaussians(
            means=torch.cat([g.means for g in items], nd),
            quats=torch.cat([g.quats for g in items], nd),
            scales=torch.cat([g.scales for g in items], nd),
            opacities=torch.cat([g.opacities for g in items], nd),
            colors=torch.cat([g.colors for g in items], nd),
        )

    # -- pruning -------------------------------------------------------------------------------------------------------
    def prune_mask(self, threshold: float = DEFAULT_PRUNE_THRESHOLD) -> Tensor:  # [..., N] bool
        """Gaussians to keep: opacity > threshold."""
        return self.opacities > threshold

    def prune(self, threshold: float = DEFAULT_PRUNE_THRESHOLD) -> Gaussians:
        """Drop Gaussians with opacity <= threshold (unbatched only: batched scenes would become ragged; ``unbind``
        first, or use ``prune_mask`` and zero the opacities)."""
        if self.batch_shape:
            raise ValueError(
                f"prune: batched Gaussians (batch shape {tuple(self.batch_shape)}) would become ragged; call unbind()"
            )
        return self.index(self.prune_mask(threshold))


@dataclass
class DeformableGaussians:
    """Canonical Gaussians plus per-query-time deformations.

    ``times`` are the query times in [0, 1], increasing, either shared ``[T]`` or per batch element ``[..., T]``.
    ``opacities_t`` / ``colors_t`` (optional): opacity and colour at each query time, absolute values that replace
    the canonical ones there (the colours in the canonical's form, RGB or SH).
    """

    canonical: Gaussians
    times: Tensor  # [T] or [..., T]
    delta_means: Tensor  # [..., T, N, 3]
    delta_quats: Tensor  # [..., T, N, 4] wxyz; identity = (1, 0, 0, 0)
    delta_log_scales: Tensor  # [..., T, N, 3] log-space offsets
    opacities_t: Tensor | None = None  # [..., T, N] in [0, 1]; None: the canonical opacities at every time
    colors_t: Tensor | None = None  # [..., T, N, 3] or [..., T, N, K, 3]; None: the canonical colours

    def __post_init__(self) -> None:
        batch, n = self.canonical.batch_shape, self.canonical.num_gaussians
        t = self.times.shape[-1] if self.times.dim() else -1
        if self.times.dim() != 1 and tuple(self.times.shape[:-1]) != tuple(batch):
            raise ValueError(f"times: expected shape [T] or [..., T] with batch {tuple(batch)}, got {self.times.shape}")
        if t < 1:
            raise ValueError(f"times: expected at least one query time, got shape {tuple(self.times.shape)}")
        _check("delta_means", self.delta_means, (t, n, 3), batch)
        _check("delta_quats", self.delta_quats, (t, n, 4), batch)
        _check("delta_log_scales", self.delta_log_scales, (t, n, 3), batch)
        if self.opacities_t is not None:
            _check("opacities_t", self.opacities_t, (t, n), batch)
        if self.colors_t is not None:
            _check("colors_t", self.colors_t, (t, *self.canonical.colors.shape[len(batch) :]), batch)

    @classmethod
    def static(cls, canonical: Gaussians, times: Tensor) -> DeformableGaussians:
        """A deformable scene that does not move (zero deltas at the given query times)."""
        batch, n, T = canonical.batch_shape, canonical.num_gaussians, times.shape[-1]
        dq = torch.zeros(*batch, T, n, 4, dtype=canonical.means.dtype, device=canonical.device)
        dq[..., 0] = 1.0
        zeros = torch.zeros(*batch, T, n, 3, dtype=canonical.means.dtype, device=canonical.device)
        return cls(canonical, times, zeros, dq, zeros.clone())

    @property
    def batch_shape(self) -> torch.Size:
        return self.canonical.batch_shape

    @property
    def num_gaussians(self) -> int:
        return self.canonical.num_gaussians

    @property
    def num_times(self) -> int:
        return self.times.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.canonical.device

    @property
    def time_varying_appearance(self) -> bool:
        """Whether opacity or colour change over time (``opacities_t`` / ``colors_t`` set)."""
        return self.opacities_t is not None or self.colors_t is not None

    def _map(self, fn) -> DeformableGaussians:
        """``fn`` on every tensor (the canonical Gaussians' included); None fields stay None."""
        return DeformableGaussians(
            self.canonical._map(fn),
            fn(self.times),
            fn(self.delta_means),
            fn(self.delta_quats),
            fn(self.delta_log_scales),
            None if self.opacities_t is None else fn(self.opacities_t),
            None if self.colors_t is None else fn(self.colors_t),
        )

    def to(self, *args, **kwargs) -> DeformableGaussians:
        return self._map(lambda x: x.to(*args, **kwargs))

    def detach(self) -> DeformableGaussians:
        return self._map(lambda x: x.detach())

    def unbind(self) -> list[DeformableGaussians]:
        """Split the first batch dimension into a list of scenes (shared ``[T]`` times stay shared)."""
        if not self.batch_shape:
            raise ValueError("unbind: these Gaussians have no batch dimension")
        out = []
        for i, canonical in enumerate(self.canonical.unbind()):
            out.append(
                DeformableGaussians(
                    canonical,
                    self.times if self.times.dim() == 1 else self.times[i],
                    self.delta_means[i],
                    self.delta_quats[i],
                    self.delta_log_scales[i],
                    None if self.opacities_t is None else self.opacities_t[i],
                    None if self.colors_t is None else self.colors_t[i],
                )
            )
        return out

    def opacities_at_times(self) -> Tensor:  # [..., T, N]
        """Opacity at every stored query time (the canonical's, repeated, when it does not change)."""
        if self.opacities_t is not None:
            return self.opacities_t
        c = self.canonical
        return c.opacities[..., None, :].expand(*self.delta_means.shape[:-1])

    def colors_at_times(self) -> Tensor:  # [..., T, N, 3] or [..., T, N, K, 3]
        """Colours at every stored query time (the canonical's, repeated, when they do not change)."""
        if self.colors_t is not None:
            return self.colors_t
        c = self.canonical
        lead = len(self.batch_shape)
        return c.colors.unsqueeze(lead).expand(*self.delta_means.shape[:-2], *c.colors.shape[lead:])

    # -- evaluation ----------------------------------------------------------------------------------------------------
    def at_index(self, i: int) -> Gaussians:
        """Static Gaussians at the i-th stored query time."""
        c = self.canonical
        lead = (slice(None),) * len(self.batch_shape)
        return Gaussians(
            means=c.means + self.delta_means[..., i, :, :],
            quats=quat_normalize(quat_multiply(c.quats, self.delta_quats[..., i, :, :])),
            scales=c.scales * torch.exp(self.delta_log_scales[..., i, :, :]),
            opacities=c.opacities if self.opacities_t is None else self.opacities_t[..., i, :],
            colors=c.colors if self.colors_t is None else self.colors_t[lead + (i,)],
        )

    def at(self, t: float | Tensor) -> Gaussians:
        """Static Gaussians at time ``t`` (a float or a tensor ``[...]`` with one time per batch element).

        ``t`` equal to a stored query time uses that time's deltas exactly. Between two stored times the deltas are
        interpolated linearly (Δμ, Δs, and the time-varying opacity and colour when present; Δq by normalised linear
        interpolation with the sign of the first aligned to the second). Outside ``[times[0], times[-1]]`` the nearest end's deltas are used (no extrapolation).
        """
        times = self.times
        batch = self.batch_shape
        t = torch.as_tensor(t, dtype=times.dtype, device=times.device)
        times_b = times.expand(*batch, times.shape[-1]) if times.dim() == 1 else times
        t_b = t.expand(batch) if t.dim() == 0 else t
        T = times_b.shape[-1]
        # right neighbour: first stored time >= t
        hi = torch.searchsorted(times_b.contiguous(), t_b[..., None].contiguous()).squeeze(-1).clamp(0, T - 1)
        lo = (hi - 1).clamp(min=0)
        t_lo = torch.gather(times_b, -1, lo[..., None]).squeeze(-1)
        t_hi = torch.gather(times_b, -1, hi[..., None]).squeeze(-1)
        span = t_hi - t_lo
        w = torch.where(
            span > 0, (t_b - t_lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(t_b)
        )
        w = w.clamp(0.0, 1.0)

        def pick(x: Tensor, idx: Tensor) -> Tensor:  # x [..., T, *rest], idx [...] -> [..., *rest]
            rest = x.shape[len(batch) + 1 :]
            g = idx.view(*idx.shape, 1, *(1,) * len(rest)).expand(*idx.shape, 1, *rest)
            return torch.gather(x, len(batch), g).squeeze(len(batch))

        def lerp(x: Tensor) -> Tensor:  # [..., T, N, *rest] -> [..., N, *rest] at t
            wx = w.view(*w.shape, *(1,) * (x.dim() - len(batch) - 1)).to(x.dtype)
            return torch.lerp(pick(x, lo), pick(x, hi), wx)

        wb = w[..., None, None].to(self.delta_means.dtype)
        dm = torch.lerp(pick(self.delta_means, lo), pick(self.delta_means, hi), wb)
        ds = torch.lerp(pick(self.delta_log_scales, lo), pick(self.delta_log_scales, hi), wb)
        q_lo, q_hi = pick(self.delta_quats, lo), pick(self.delta_quats, hi)
        q_lo = torch.where((q_lo * q_hi).sum(-1, keepdim=True) < 0, -q_lo, q_lo)  # at a stored time w = 1: q_hi as is
        dq = quat_normalize(torch.lerp(q_lo, q_hi, wb))
        c = self.canonical
        return Gaussians(
            means=c.means + dm,
            quats=quat_normalize(quat_multiply(c.quats, dq)),
            scales=c.scales * torch.exp(ds),
            opacities=c.opacities if self.opacities_t is None else lerp(self.opacities_t),
            colors=c.colors if self.colors_t is None else lerp(self.colors_t),
        )

    def frames(self) -> list[Gaussians]:
        """Static Gaussians at every stored query time, in order."""
        return [self.at_index(i) for i in range(self.num_times)]

    # -- pruning / concatenation ---------------------------------------------------------------------------------------
    def index(self, idx: Tensor | slice) -> DeformableGaussians:
        """Select Gaussians along N (canonical and all deltas alike)."""
        nd = len(self.batch_shape)
        sel = (slice(None),) * nd + (slice(None), idx)
        return DeformableGaussians(
            self.canonical.index(idx),
            self.times,
            self.delta_means[sel],
            self.delta_quats[sel],
            self.delta_log_scales[sel],
            None if self.opacities_t is None else self.opacities_t[sel],
            None if self.colors_t is None else self.colors_t[sel],
        )

    def prune_mask(self, threshold: float = DEFAULT_PRUNE_THRESHOLD) -> Tensor:  # [..., N] bool
        """Gaussians to keep: opacity > threshold (at some query time when the opacity changes over time)."""
        if self.opacities_t is None:
            return self.canonical.prune_mask(threshold)
        return (self.opacities_t > threshold).any(dim=-2)

    def prune(self, threshold: float = DEFAULT_PRUNE_THRESHOLD) -> DeformableGaussians:
        """Drop Gaussians whose opacity is <= threshold (at every query time, when it changes over time); unbatched
        only."""
        if self.batch_shape:
            raise ValueError(
                f"prune: batched Gaussians (batch shape {tuple(self.batch_shape)}) would become ragged; index per scene"
            )
        return self.index(self.prune_mask(threshold))

    @staticmethod
    def cat(items: Sequence[DeformableGaussians]) -> DeformableGaussians:
        """Concatenate along N; all items must share the same query times."""
        if not items:
            raise ValueError("DeformableGaussians.cat: empty sequence")
        for d in items[1:]:
            if d.times.shape != items[0].times.shape or not torch.equal(d.times, items[0].times):
                raise ValueError("DeformableGaussians.cat: all items must have the same query times")
        nd = len(items[0].batch_shape) + 1
        opacities_t = colors_t = None
        if any(d.opacities_t is not None for d in items):  # time-varying in one item: materialised for all
            opacities_t = torch.cat([d.opacities_at_times() for d in items], nd)
        if any(d.colors_t is not None for d in items):
            colors_t = torch.cat([d.colors_at_times() for d in items], nd)
        return DeformableGaussians(
            Gaussians.cat([d.canonical for d in items]),
            items[0].times,
            torch.cat([d.delta_means for d in items], nd),
            torch.cat([d.delta_quats for d in items], nd),
            torch.cat([d.delta_log_scales for d in items], nd),
            opacities_t,
            colors_t,
        )
