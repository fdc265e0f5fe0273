"""Inference composition: camera-controlled video sampling, reconstruction and the full generation pipeline."""

from diff4splat.pipelines.generation import Diff4SplatPipeline, Generation
from diff4splat.pipelines.jobs import GenerateConfig, generate

__all__ = ["Diff4SplatPipeline", "GenerateConfig", "Generation", "generate"]
