"""Gaussian scenes: static and deformable types, and their file formats (.ply, .splat, 4D safetensors)."""

from diff4splat.gaussians.io import (
    load_4d,
    load_ply,
    load_splat,
    read_4d_metadata,
    save_4d,
    save_ply,
    save_ply_sequence,
    save_splat,
)
from diff4splat.gaussians.types import DEFAULT_PRUNE_THRESHOLD, DeformableGaussians, Gaussians

__all__ = [
    "DEFAULT_PRUNE_THRESHOLD",
    "DeformableGaussians",
    "Gaussians",
    "load_4d",
    "load_ply",
    "load_splat",
    "read_4d_metadata",
    "save_4d",
    "save_ply",
    "save_ply_sequence",
    "save_splat",
]
