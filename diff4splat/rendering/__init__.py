"""One render API over batches of scenes and views; gsplat (CUDA) and pure-torch (reference) backends."""

from diff4splat.rendering.api import Backend, RenderConfig, RenderOutput, gsplat_available, render, resolve_backend

__all__ = ["Backend", "RenderConfig", "RenderOutput", "gsplat_available", "render", "resolve_backend"]
