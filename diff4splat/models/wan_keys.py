"""Wan2.2 key names: the original release's tensor names <-> diffusers' ``WanTransformer3DModel`` / ``AutoencoderKLWan``.

One table of rules per model: each rule is a pair of key templates, ``(original, diffusers)``, whose placeholders
(``{i}``, ``{j}`` block indices, ``{p}`` = ``weight|bias``) are carried across, so the same table converts both ways.
Every key must match exactly one rule and no two keys may land on the same name, otherwise the conversion fails and
names the keys.

No tensor is reshaped: the per-block ``modulation`` [1, 6, dim] is diffusers' ``scale_shift_table`` [1, 6, dim] and the
head's ``modulation`` [1, 2, dim] its top-level ``scale_shift_table`` [1, 2, dim]. The original's block norms are
``norm1`` (self-attn), ``norm3`` (cross-attn, affine) and ``norm2`` (ffn); diffusers numbers them in call order, so the
original ``norm3`` is diffusers' ``norm2`` (the other two have no parameters). In the VAE the resampling layer is the
last entry of the original block's ``Sequential`` (index = number of residual blocks in it) and a named
``downsampler`` / ``upsampler`` in diffusers; that index is recomputed from the residual blocks present.

Reading the release's files and loading the models: ``diff4splat.models.wan_convert``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

Kind = Literal["transformer", "vae"]
_PLACEHOLDERS = {"i": r"\d+", "j": r"\d+", "n": r"\d+", "p": r"weight|bias"}


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model: missing, unexpected or mis-shaped keys."""


@dataclass(frozen=True)
class Rule:
    """One key in both namings; ``{name}`` placeholders are carried across, except ``{n}`` (see ``_derive_n``)."""

    original: str
    diffusers: str

    def __post_init__(self) -> None:
        for side in ("original", "diffusers"):
            parts = re.split(r"\{(\w+)\}", getattr(self, side))
            regex = "".join(re.escape(s) if k % 2 == 0 else f"(?P<{s}>{_PLACEHOLDERS[s]})" for k, s in enumerate(parts))
            object.__setattr__(self, f"_{side}_re", re.compile(regex))

    def match(self, key: str, side: str) -> re.Match | None:
        return getattr(self, f"_{side}_re").fullmatch(key)


def _transformer_rules() -> list[Rule]:
    rules = [
        Rule("patch_embedding.{p}", "patch_embedding.{p}"),
        Rule("text_embedding.0.{p}", "condition_embedder.text_embedder.linear_1.{p}"),
        Rule("text_embedding.2.{p}", "condition_embedder.text_embedder.linear_2.{p}"),
        Rule("time_embedding.0.{p}", "condition_embedder.time_embedder.linear_1.{p}"),
        Rule("time_embedding.2.{p}", "condition_embedder.time_embedder.linear_2.{p}"),
        Rule("time_projection.1.{p}", "condition_embedder.time_proj.{p}"),
        Rule("blocks.{i}.norm3.{p}", "blocks.{i}.norm2.{p}"),
        Rule("blocks.{i}.ffn.0.{p}", "blocks.{i}.ffn.net.0.proj.{p}"),
        Rule("blocks.{i}.ffn.2.{p}", "blocks.{i}.ffn.net.2.{p}"),
        Rule("blocks.{i}.modulation", "blocks.{i}.scale_shift_table"),
        Rule("head.head.{p}", "proj_out.{p}"),
        Rule("head.modulation", "scale_shift_table"),
    ]
    for orig_attn, attn in (("self_attn", "attn1"), ("cross_attn", "attn2")):
        for orig_proj, proj in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
            rules.append(Rule(f"blocks.{{i}}.{orig_attn}.{orig_proj}.{{p}}", f"blocks.{{i}}.{attn}.{proj}.{{p}}"))
        for norm in ("norm_q", "norm_k"):
            rules.append(Rule(f"blocks.{{i}}.{orig_attn}.{norm}.weight", f"blocks.{{i}}.{attn}.{norm}.weight"))
    return rules


# Inside one residual block: original nn.Sequential indices (RMS_norm, SiLU, conv, RMS_norm, SiLU, Dropout, conv).
_RESIDUAL = (
    ("residual.0.gamma", "norm1.gamma"),
    ("residual.2.{p}", "conv1.{p}"),
    ("residual.3.gamma", "norm2.gamma"),
    ("residual.6.{p}", "conv2.{p}"),
    ("shortcut.{p}", "conv_shortcut.{p}"),
)


def _vae_rules() -> list[Rule]:
    rules = [Rule("conv1.{p}", "quant_conv.{p}"), Rule("conv2.{p}", "post_quant_conv.{p}")]
    for coder in ("encoder", "decoder"):
        rules += [
            Rule(f"{coder}.conv1.{{p}}", f"{coder}.conv_in.{{p}}"),
            Rule(f"{coder}.head.0.gamma", f"{coder}.norm_out.gamma"),
            Rule(f"{coder}.head.2.{{p}}", f"{coder}.conv_out.{{p}}"),
            Rule(f"{coder}.middle.1.norm.gamma", f"{coder}.mid_block.attentions.0.norm.gamma"),
            Rule(f"{coder}.middle.1.to_qkv.{{p}}", f"{coder}.mid_block.attentions.0.to_qkv.{{p}}"),
            Rule(f"{coder}.middle.1.proj.{{p}}", f"{coder}.mid_block.attentions.0.proj.{{p}}"),
        ]
        for orig_mid, mid in (("0", "0"), ("2", "1")):
            rules += [
                Rule(f"{coder}.middle.{orig_mid}.{a}", f"{coder}.mid_block.resnets.{mid}.{b}") for a, b in _RESIDUAL
            ]
        samples, blocks, sampler = (
            ("downsamples", "down_blocks", "downsampler")
            if coder == "encoder"
            else ("upsamples", "up_blocks", "upsampler")
        )
        orig_block, block = f"{coder}.{samples}.{{i}}.{samples}", f"{coder}.{blocks}.{{i}}"
        rules += [Rule(f"{orig_block}.{{j}}.{a}", f"{block}.resnets.{{j}}.{b}") for a, b in _RESIDUAL]
        rules += [
            Rule(f"{orig_block}.{{n}}.{m}.{{p}}", f"{block}.{sampler}.{m}.{{p}}") for m in ("resample.1", "time_conv")
        ]
    return rules


RULES: dict[str, list[Rule]] = {"transformer": _transformer_rules(), "vae": _vae_rules()}

# Residual blocks of VAE block {i}: the resampler's index {n} in the original Sequential is their count.
_RESNETS = {
    "original": re.compile(
        r"(?P<coder>encoder|decoder)\.(?:down|up)samples\.(?P<i>\d+)\.(?:down|up)samples\.(?P<j>\d+)\.(?:residual|shortcut)\."
    ),
    "diffusers": re.compile(r"(?P<coder>encoder|decoder)\.(?:down|up)_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)\."),
}


def _derive_n(keys: Sequence[str], side: str) -> dict[tuple[str, str], str]:
    counts: dict[tuple[str, str], set[str]] = {}
    for key in keys:
        if m := _RESNETS[side].match(key):
            counts.setdefault((m["coder"], m["i"]), set()).add(m["j"])
    return {block: str(len(js)) for block, js in counts.items()}


def _rename(
    state_dict: Mapping[str, Tensor], kind: Kind, src: str, dst: str
) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Rename every key from naming ``src`` to ``dst``: (renamed dict, new name -> old name, keys no rule matches)."""
    if kind not in RULES:
        raise ValueError(f"kind must be one of {sorted(RULES)}, got {kind!r}")
    rules = RULES[kind]
    n_of_block = _derive_n(list(state_dict), src) if kind == "vae" else {}
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unmatched: list[str] = []
    for key, tensor in state_dict.items():
        hits = [(rule, m) for rule in rules if (m := rule.match(key, src))]
        if not hits:
            unmatched.append(key)
            continue
        if len(hits) > 1:
            raise RuntimeError(f"{key!r} matches {len(hits)} rename rules: {[r for r, _ in hits]}")
        rule, m = hits[0]
        groups = m.groupdict()
        if "{n}" in rule.original:
            coder = key.split(".", 1)[0]
            n = n_of_block.get((coder, groups["i"]), "0")
            if src == "original" and groups["n"] != n:
                raise CheckpointMismatchError(
                    f"{key!r}: the resampler of {coder} block {groups['i']} should follow its {n} residual blocks"
                )
            groups["n"] = n
        new = getattr(rule, dst).format(**groups)
        if new in out:
            raise CheckpointMismatchError(f"{origin[new]!r} and {key!r} both map to {new!r}")
        out[new], origin[new] = tensor, key
    return out, origin, unmatched


def _convert(state_dict: Mapping[str, Tensor], kind: Kind, src: str, dst: str) -> dict[str, Tensor]:
    out, _, unmatched = _rename(state_dict, kind, src, dst)
    if unmatched:
        raise CheckpointMismatchError(
            f"{len(unmatched)} key(s) are not {src} Wan2.2 {kind} names: {_listing(unmatched)}"
        )
    return out


def original_to_diffusers(state_dict: Mapping[str, Tensor], kind: Kind = "transformer") -> dict[str, Tensor]:
    """Original-release names -> diffusers names (same tensors). Unknown keys raise ``CheckpointMismatchError``."""
    return _convert(state_dict, kind, "original", "diffusers")


def diffusers_to_original(state_dict: Mapping[str, Tensor], kind: Kind = "transformer") -> dict[str, Tensor]:
    """Diffusers names -> original-release names (same tensors); the exact inverse of ``original_to_diffusers``."""
    return _convert(state_dict, kind, "diffusers", "original")


def _listing(keys: Sequence[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
