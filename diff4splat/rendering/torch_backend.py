"""Pure-torch reference rasteriser for 3D Gaussians (CPU or GPU, differentiable).

It reproduces gsplat's "classic" 3DGS pipeline step by step so the two agree to float32 round-off:

1. EWA projection: camera-space mean and covariance, the perspective Jacobian with the view-frustum clamp of
   ``x/z`` and ``y/z`` at 1.3x the half field of view, a 2D low-pass dilation ``+ eps2d * I`` (0.3 px²), culling
   outside ``[near, far]``, of non-positive determinants and of opacities below 1/255.
2. An opacity-aware axis-aligned extent per Gaussian: ``ceil(min(3.33, sqrt(2 ln(255 o))) * sqrt(Σ2d_ii))`` pixels,
   culled when it misses the image; the Gaussian is then assigned to every 16x16 tile its extent overlaps.
3. Per tile, front-to-back alpha compositing in depth (camera z) order of the Gaussians assigned to it, at pixel
   centres ``(j + 0.5, i + 0.5)``: ``α = min(0.999, o exp(-½ dᵀ Σ2d⁻¹ d))``, skipped when ``α < 1/255``; a pixel
   stops at the Gaussian that would bring its transmittance to ``<= 1e-4`` (that Gaussian excluded).

Compositing is vectorised: Gaussians are grouped per tile, tiles are batched with padding, and each
(tile chunk x depth block) evaluates ``[tiles, 256 pixels, Gaussians]`` at once with transmittance from a cumulative
product carried across blocks, so memory stays below ``max_elements`` floats per temporary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diff4splat.geometry.rotations import quat_to_matrix

__all__ = ["project_gaussians", "rasterize_tiles"]

ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_EPS = 1e-4
MAX_ALPHA = 0.999
EXTENT_SIGMAS = 3.33
_CHUNK_ELEMENTS = 1 << 18  # floats per temporary for _CompositeChunk (tiles per chunk; blocks are unchanged)
SIGMA_CLAMP = 80.0  # exp(-80) is far below ALPHA_THRESHOLD and still a normal float32


def project_gaussians(
    means: Tensor,  # [..., N, 3]
    quats: Tensor,  # [..., N, 4] wxyz
    scales: Tensor,  # [..., N, 3]
    opacities: Tensor,  # [..., N]
    viewmats: Tensor,  # [..., C, 4, 4] world-to-camera (OpenCV)
    Ks: Tensor,  # [..., C, 3, 3] pixel intrinsics
    width: int,
    height: int,
    near: float = 0.001,
    far: float = 100.0,
    eps2d: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA-project Gaussians into each camera.

    Returns ``means2d [..., C, N, 2]`` (pixels), ``conics [..., C, N, 3]`` (upper triangle of the inverse dilated 2D
    covariance: a, b, c), ``depths [..., C, N]`` (camera z) and integer ``radii [..., C, N, 2]`` (x and y half extents
    in pixels; 0 = culled).
    """
    R = quat_to_matrix(quats)  # [..., N, 3, 3]
    M = R * scales[..., None, :]
    covars = M @ M.transpose(-1, -2)  # [..., N, 3, 3]
    Rw = viewmats[..., :3, :3]  # [..., C, 3, 3]
    tw = viewmats[..., :3, 3]  # [..., C, 3]
    means_c = torch.einsum("...cij,...nj->...cni", Rw, means) + tw[..., None, :]  # [..., C, N, 3]
    covars_c = Rw[..., None, :, :] @ covars[..., None, :, :, :] @ Rw[..., None, :, :].transpose(-1, -2)

    fx = Ks[..., 0, 0][..., None]  # [..., C, 1]
    fy = Ks[..., 1, 1][..., None]
    cx = Ks[..., 0, 2][..., None]
    cy = Ks[..., 1, 2][..., None]
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z_safe
    tx = z_safe * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z_safe * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zero = torch.zeros_like(z)
    J = torch.stack(
        [
            torch.stack([fx * rz, zero, -fx * tx * rz * rz], -1),
            torch.stack([zero, fy * rz, -fy * ty * rz * rz], -1),
        ],
        dim=-2,
    )  # [..., C, N, 2, 3]
    cov2d = J @ covars_c @ J.transpose(-1, -2)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    c00 = cov2d[..., 0, 0] + eps2d
    c01 = cov2d[..., 0, 1]
    c11 = cov2d[..., 1, 1] + eps2d
    det = c00 * c11 - c01 * c01
    valid = in_depth & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)

    with torch.no_grad():
        opac = opacities[..., None, :].expand_as(z)
        valid = valid & (opac >= ALPHA_THRESHOLD)
        ratio = torch.where(valid, opac / ALPHA_THRESHOLD, torch.ones_like(opac))
        extend = torch.clamp(torch.sqrt(2.0 * torch.log(ratio)), max=EXTENT_SIGMAS)
        rx = torch.ceil(extend * torch.sqrt(c00.clamp(min=0)))
        ry = torch.ceil(extend * torch.sqrt(c11.clamp(min=0)))
        valid = valid & ((rx > 0) | (ry > 0))
        mx, my = means2d[..., 0], means2d[..., 1]
        valid = valid & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.stack([rx, ry], -1).to(torch.int32) * valid[..., None]
    return means2d, conics, z, radii


def _tile_pairs(
    means2d: Tensor,  # [I, N, 2]
    radii: Tensor,  # [I, N, 2]
    depths: Tensor,  # [I, N]
    tile_size: int,
    tile_w: int,
    tile_h: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(Gaussian, tile) intersections sorted by (image, tile, depth): flat Gaussian ids [P], segment keys [S] and
    segment lengths [S] (a segment = the depth-sorted Gaussians of one tile of one image)."""
    I, N = depths.shape
    ts = float(tile_size)
    rx = radii[..., 0].to(means2d.dtype)
    ry = radii[..., 1].to(means2d.dtype)
    tile_x = means2d[..., 0] / ts
    tile_y = means2d[..., 1] / ts
    x0 = torch.floor(tile_x - rx / ts).clamp(0, tile_w).long()
    x1 = torch.ceil(tile_x + rx / ts).clamp(0, tile_w).long()
    y0 = torch.floor(tile_y - ry / ts).clamp(0, tile_h).long()
    y1 = torch.ceil(tile_y + ry / ts).clamp(0, tile_h).long()
    valid = (radii > 0).all(-1)
    nx = x1 - x0
    counts = torch.where(valid, nx * (y1 - y0), torch.zeros_like(nx)).reshape(-1)
    gid = torch.repeat_interleave(torch.arange(I * N, device=depths.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    off = torch.arange(gid.numel(), device=depths.device) - starts[gid]
    nx_g = nx.reshape(-1)[gid]
    tx = x0.reshape(-1)[gid] + off % nx_g.clamp(min=1)
    ty = y0.reshape(-1)[gid] + off // nx_g.clamp(min=1)
    image = gid // N
    key = image * (tile_w * tile_h) + ty * tile_w + tx
    # sort by depth, then (stably) by key: gives (image, tile, depth) order
    order = torch.argsort(depths.reshape(-1)[gid], stable=True)
    gid, key = gid[order], key[order]
    order = torch.argsort(key, stable=True)
    gid, key = gid[order], key[order]
    seg_keys, seg_lens = torch.unique_consecutive(key, return_counts=True)
    return gid, seg_keys, seg_lens


class _CompositeChunk(torch.autograd.Function):
    """Front-to-back compositing of a chunk of tiles with a hand-written backward.

    Inputs are the per-tile, depth-sorted (padded) Gaussians of ``s`` tiles: ``means [s, L, 2]``, ``conics [s, L, 3]``,
    ``opacities [s, L]``, ``features [s, L, D]``, ``present [s, L]`` (False = padding) and the pixel centres
    ``pix [s, P, 2]``; ``block`` is the depth-block length. Returns ``features [s, P, D]`` and the final transmittance
    ``[s, P]`` of the included Gaussians. The rules (and the float operations of the forward) are those of
    ``_composite_reference``; the backward is the 3DGS one: with ``T_i`` the transmittance before Gaussian ``i``,
    ``w_i = α_i T_i`` and ``g`` the output gradient,
    ``dL/dα_i = T_i (f_i·g) - (Σ_{j>i} w_j f_j·g + g_T T_final) / (1 - α_i)`` over the included Gaussians, with the
    suffix sums taken as reverse cumulative sums. It saves three ``[s, P, L]`` tensors (weights, weights of the
    Gaussians that pass gradient, their alphas) instead of autograd's chain of temporaries.
    """

    @staticmethod
    def forward(ctx, means, conics, opac, feat, present, pix, block: int):  # noqa: D102
        s, L, D = feat.shape
        P = pix.shape[1]
        acc = feat.new_zeros(s, P, D)
        T_all = feat.new_ones(s, P)
        T_inc = feat.new_ones(s, P)
        px = pix[:, :, 0, None]
        py = pix[:, :, 1, None]
        saved = []
        for b0 in range(0, L, block):
            sl = slice(b0, min(L, b0 + block))
            m = means[:, sl]
            con = conics[:, sl]
            dx = m[:, None, :, 0] - px  # [s, P, Lb]
            dy = m[:, None, :, 1] - py
            # sigma = 0.5 * (a dx dx + c dy dy) + b dx dy, in the reference's order of operations
            sigma = con[:, None, :, 0] * dx
            sigma.mul_(dx)
            tmp = con[:, None, :, 2] * dy
            tmp.mul_(dy)
            sigma.add_(tmp).mul_(0.5)
            torch.mul(con[:, None, :, 1], dx, out=tmp)
            tmp.mul_(dy)
            sigma.add_(tmp)
            del dx, dy
            # masks are 0/1 floats: comparisons into float tensors and multiplications are much faster on the CPU
            # than bool tensors with where / masked_fill
            keep = torch.ge(sigma, 0.0, out=torch.empty_like(sigma))
            # exp is slow on CPU where its result underflows; alpha <= exp(-sigma) < 1/255 beyond sigma = 6 anyway
            sigma.clamp_(max=SIGMA_CLAMP)
            torch.neg(sigma, out=tmp)
            tmp.exp_()
            alpha = tmp.mul_(opac[:, None, sl])  # unclamped alpha
            passes = torch.le(alpha, MAX_ALPHA, out=sigma)  # clamp lets gradient through; sigma is not needed
            alpha.clamp_(max=MAX_ALPHA)
            keep.mul_(present[:, None, sl]).mul_(torch.ge(alpha, ALPHA_THRESHOLD, out=torch.empty_like(alpha)))
            alpha.mul_(keep)
            one_minus = torch.rsub(alpha, 1.0)
            T_next = torch.cumprod(one_minus, dim=-1).mul_(T_all[..., None])
            T_prev = torch.cat([T_all[..., None], T_next[..., :-1]], dim=-1)
            include = torch.gt(T_next, TRANSMITTANCE_EPS, out=keep)
            passes.mul_(include)  # Gaussians whose alpha gets gradient: included and not clamped (or alpha = 0)
            a_grad = alpha * passes
            weights = alpha.mul_(T_prev).mul_(include)
            w_grad = weights * passes
            acc.baddbmm_(weights, feat[:, sl])
            # T_inc *= prod(where(include, 1 - alpha, 1))
            T_inc.mul_(one_minus.mul_(include).add_(include.neg_().add_(1.0)).prod(-1))
            T_all = T_next[..., -1].clone()
            del sigma, tmp, one_minus, T_next, T_prev, keep, include, passes
            saved += [weights, w_grad, a_grad]
        ctx.block = block
        ctx.save_for_backward(means, conics, opac, feat, pix, T_inc, *saved)
        return acc, T_inc

    @staticmethod
    def backward(ctx, g_acc, g_T):  # noqa: D102
        means, conics, opac, feat, pix, T_inc, *saved = ctx.saved_tensors
        block = ctx.block
        s, L, D = feat.shape
        P = pix.shape[1]
        if g_acc is None:
            g_acc = feat.new_zeros(s, P, D)
        g_acc = g_acc.contiguous()
        later = g_T * T_inc if g_T is not None else feat.new_zeros(s, P)  # suffix sum carried back to front
        g_means = torch.zeros_like(means)
        g_conics = torch.zeros_like(conics)
        g_opac = torch.zeros_like(opac)
        g_feat = torch.zeros_like(feat)
        px = pix[:, :, 0, None]
        py = pix[:, :, 1, None]
        starts = list(range(0, L, block))
        for k in reversed(range(len(starts))):
            sl = slice(starts[k], min(L, starts[k] + block))
            weights, w_grad, a_grad = saved[3 * k : 3 * k + 3]
            f = feat[:, sl]
            g_feat[:, sl] = torch.bmm(weights.transpose(1, 2), g_acc)
            fg = torch.bmm(g_acc, f.transpose(1, 2))  # [s, P, Lb]
            wfg = weights * fg
            suffix = wfg.flip(-1).cumsum_(-1).flip(-1)  # inclusive suffix sums
            new_later = later + suffix[..., 0]
            suffix.sub_(wfg).add_(later[..., None])  # Σ_{j>i} w_j f_j·g + g_T T_final
            later = new_later
            del wfg
            # dL/dsigma = -α dL/dα = α X / (1 - α) - α T_prev (f·g)
            g_sigma = suffix.mul_(a_grad).div_(torch.rsub(a_grad, 1.0)).sub_(fg.mul_(w_grad))
            del fg
            m = means[:, sl]
            con = conics[:, sl]
            dx = m[:, None, :, 0] - px
            dy = m[:, None, :, 1] - py
            s0 = g_sigma.sum(1)
            gdx = g_sigma * dx
            sx = gdx.sum(1)
            sxy = (gdx * dy).sum(1)
            sxx = gdx.mul_(dx).sum(1)
            gdy = g_sigma.mul_(dy)
            sy = gdy.sum(1)
            syy = gdy.mul_(dy).sum(1)
            a, b, c = con.unbind(-1)
            g_means[:, sl, 0] = a * sx + b * sy
            g_means[:, sl, 1] = b * sx + c * sy
            g_conics[:, sl, 0] = 0.5 * sxx
            g_conics[:, sl, 1] = sxy
            g_conics[:, sl, 2] = 0.5 * syy
            o = opac[:, sl]
            g_opac[:, sl] = -s0 / torch.where(o != 0, o, torch.ones_like(o))
        return g_means, g_conics, g_opac, g_feat, None, None, None


def rasterize_tiles(
    means2d: Tensor,  # [I, N, 2]
    conics: Tensor,  # [I, N, 3]
    features: Tensor,  # [I, N, D] (colour, and depth as an extra channel if wanted)
    opacities: Tensor,  # [I, N]
    radii: Tensor,  # [I, N, 2] int, 0 = culled
    depths: Tensor,  # [I, N] sort key (camera z)
    width: int,
    height: int,
    tile_size: int = 16,
    max_elements: int = 1 << 22,
    reference: bool = False,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing; returns ``features [I, H, W, D]`` (sum of w_i f_i) and ``alphas
    [I, H, W, 1]`` (1 - final transmittance). Differentiable in means2d, conics, features and opacities.

    The default path composites with ``_CompositeChunk`` (hand-written backward); ``reference=True`` runs the same
    compositing as plain autograd-traced torch ops (slower, kept as the reference for tests)."""
    I, N, D = features.shape
    device, dtype = features.device, features.dtype
    tile_w = math.ceil(width / tile_size)
    tile_h = math.ceil(height / tile_size)
    P = tile_size * tile_size
    with torch.no_grad():
        gid, seg_keys, seg_lens = _tile_pairs(means2d, radii, depths, tile_size, tile_w, tile_h)
    flat_means = means2d.reshape(I * N, 2)
    flat_conics = conics.reshape(I * N, 3)
    flat_feat = features.reshape(I * N, D)
    flat_opac = opacities.reshape(I * N)

    # local pixel centres of a tile, [P, 2]
    ly, lx = torch.meshgrid(
        torch.arange(tile_size, device=device, dtype=dtype),
        torch.arange(tile_size, device=device, dtype=dtype),
        indexing="ij",
    )
    local = torch.stack([lx.reshape(-1), ly.reshape(-1)], -1) + 0.5

    S = seg_keys.numel()
    seg_starts = torch.cumsum(seg_lens, 0) - seg_lens
    by_len = torch.argsort(seg_lens, descending=True)
    lens_sorted = seg_lens[by_len].tolist()
    block_max = max(1, max_elements // P)

    out_keys: list[Tensor] = []
    out_feat: list[Tensor] = []
    out_alpha: list[Tensor] = []
    s = 0
    while s < S:
        L = lens_sorted[s]
        Lb = min(L, block_max)
        # the fast path takes fewer tiles at a time (cache-sized temporaries); that does not change the results
        chunk = max(1, (max_elements if reference else min(max_elements, _CHUNK_ELEMENTS)) // (P * Lb))
        segs = by_len[s : s + chunk]
        s += chunk
        keys = seg_keys[segs]
        tile = keys % (tile_w * tile_h)
        origin = torch.stack([(tile % tile_w) * tile_size, (tile // tile_w) * tile_size], -1).to(dtype)
        pix = origin[:, None, :] + local[None]  # [s, P, 2]
        starts, lens = seg_starts[segs], seg_lens[segs]
        if reference:
            acc, T_inc = _composite_reference(
                flat_means, flat_conics, flat_feat, flat_opac, gid, starts, lens, pix, L, Lb
            )
        else:
            pos = torch.arange(L, device=device)
            present = pos[None, :] < lens[:, None]  # [s, L]
            idx = gid[(starts[:, None] + pos[None, :]).clamp(max=gid.numel() - 1)]
            idx = torch.where(present, idx, torch.zeros_like(idx))
            acc, T_inc = _CompositeChunk.apply(
                flat_means[idx], flat_conics[idx], flat_opac[idx], flat_feat[idx], present.to(dtype), pix, Lb
            )
        out_keys.append(keys)
        out_feat.append(acc)
        out_alpha.append(1.0 - T_inc)

    total_tiles = I * tile_w * tile_h
    feat_tiles = torch.zeros(total_tiles, P, D, device=device, dtype=dtype)
    alpha_tiles = torch.zeros(total_tiles, P, device=device, dtype=dtype)
    if out_keys:
        keys = torch.cat(out_keys)
        feat_tiles = feat_tiles.index_copy(0, keys, torch.cat(out_feat))
        alpha_tiles = alpha_tiles.index_copy(0, keys, torch.cat(out_alpha))

    def untile(x: Tensor, c: int) -> Tensor:
        x = x.reshape(I, tile_h, tile_w, tile_size, tile_size, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(I, tile_h * tile_size, tile_w * tile_size, c)[:, :height, :width]

    return untile(feat_tiles, D), untile(alpha_tiles[..., None], 1)


def _composite_reference(
    flat_means: Tensor,  # [I·N, 2]
    flat_conics: Tensor,  # [I·N, 3]
    flat_feat: Tensor,  # [I·N, D]
    flat_opac: Tensor,  # [I·N]
    gid: Tensor,  # [pairs] depth-sorted Gaussian ids per tile
    starts: Tensor,  # [s] first pair of each tile
    lens: Tensor,  # [s] pairs per tile
    pix: Tensor,  # [s, P, 2] pixel centres
    L: int,  # longest tile
    Lb: int,  # depth-block length
) -> tuple[Tensor, Tensor]:
    """The compositing of a chunk of tiles as autograd-traced torch ops: ``features [s, P, D]`` and the final
    transmittance of the included Gaussians ``[s, P]``. Reference for ``_CompositeChunk``."""
    device, dtype = flat_feat.device, flat_feat.dtype
    s, P, D = pix.shape[0], pix.shape[1], flat_feat.shape[1]
    acc = torch.zeros(s, P, D, device=device, dtype=dtype)
    T_all = torch.ones(s, P, device=device, dtype=dtype)
    T_inc = torch.ones(s, P, device=device, dtype=dtype)
    for b0 in range(0, L, Lb):
        pos = b0 + torch.arange(Lb, device=device)
        present = pos[None, :] < lens[:, None]  # [s, Lb]
        idx = gid[(starts[:, None] + pos[None, :]).clamp(max=gid.numel() - 1)]
        idx = torch.where(present, idx, torch.zeros_like(idx))
        m = flat_means[idx]  # [s, Lb, 2]
        con = flat_conics[idx]
        dx = m[:, None, :, 0] - pix[:, :, None, 0]  # [s, P, Lb]
        dy = m[:, None, :, 1] - pix[:, :, None, 1]
        sigma = 0.5 * (con[:, None, :, 0] * dx * dx + con[:, None, :, 2] * dy * dy) + con[:, None, :, 1] * dx * dy
        alpha = torch.clamp(flat_opac[idx][:, None, :] * torch.exp(-sigma), max=MAX_ALPHA)
        keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & present[:, None, :]
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        one_minus = 1.0 - alpha
        T_next = T_all[..., None] * torch.cumprod(one_minus, dim=-1)  # transmittance after each Gaussian
        T_prev = torch.cat([T_all[..., None], T_next[..., :-1]], dim=-1)
        include = T_next > TRANSMITTANCE_EPS
        weights = torch.where(include, alpha * T_prev, torch.zeros_like(alpha))
        acc = acc + torch.einsum("spl,sld->spd", weights, flat_feat[idx])
        T_inc = T_inc * torch.where(include, one_minus, torch.ones_like(one_minus)).prod(-1)
        T_all = T_next[..., -1]
    return acc, T_inc
