"""Gaussian scenes: static and deformable types, and their file formats (.ply, .splat, 4D safetensors)."""

from diff4splat.gaussians.types import DEFAULT_PRUNE_THRESHOLD, DeformableGaussians, Gaussians

__all__ = ["DEFAULT_PRUNE_THRESHOLD", "DeformableGaussians", "Gaussians"]
