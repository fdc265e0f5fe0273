"""Logger factories that never block a run on the network."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def _reachable(url: str, timeout: float = 2.0) -> bool:
    host = url.split("://")[-1].split("/")[0]
    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(mode: str | None = None) -> str:
    """Decide the W&B mode: an explicit ``mode`` or ``WANDB_MODE`` wins; otherwise online only when an API key is
    configured and the server answers within two seconds, offline in every other case."""
    mode = mode or os.environ.get("WANDB_MODE")
    if mode:
        if mode not in ("online", "offline", "disabled", "dryrun", "run"):
            raise ValueError(f"logger.wandb.mode: expected online, offline or disabled, got {mode!r}")
        return mode
    if not _has_wandb_key():
        log.info("W&B: no API key found, logging offline (upload later with `wandb sync`).")
        return "offline"
    if not _reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")):
        log.warning("W&B: server unreachable, logging offline (upload later with `wandb sync`).")
        return "offline"
    return "online"


def make_wandb_logger(
    project: str,
    save_dir: str,
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
    mode: str | None = None,
    log_model: bool = False,
    job_type: str = "train",
    **kwargs: Any,
) -> WandbLogger:
    """A Lightning ``WandbLogger`` writing under ``save_dir``, offline when there is no key or no network."""
    resolved = wandb_mode(mode)
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(
        project=project,
        entity=entity,
        group=group,
        name=name,
        tags=list(tags) if tags else None,
        save_dir=save_dir,
        offline=resolved in ("offline", "dryrun"),
        mode=resolved if resolved in ("online", "disabled") else "offline",
        log_model=log_model if resolved == "online" else False,
        job_type=job_type,
        **kwargs,
    )
