"""Fill a prompt-embedding cache with the captions of clip shards (and/or a caption file), once per encoder.

    python -m datamodules.encode_text --shards $DATA_ROOT/shards/dl3dv --encoder /ckpt/Wan2.2-TI2V-5B-Diffusers \
        --cache $DATA_ROOT/prompt_cache [--captions dl3dv_captions.json [--caption-field long]] [--no-negative] \
        [--device cuda] [--batch-size 8]

Captions come from every clip's `meta.json` (`ClipMeta.caption`; empty ones are not prompts) and from `--captions`, a
JSON object {sequence id: caption} whose values are strings, or objects from which `--caption-field` picks one (the
DL3DV caption dumps hold several per sequence). The empty prompt "" (what CFG dropout feeds) and, unless
`--no-negative`, Wan's standard negative prompt are always added. Only prompts missing from the cache are encoded
(`diff4splat.models.text.PromptCache`); reruns are cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datamodules.shards import SkipStats, iter_tar
from datamodules.spec import ClipMeta, SpecError
from datamodules.verify import find_shards
from diff4splat.cli import run_cli


def load_captions(path: str | Path, field: str | None = None) -> dict[str, str]:
    """{sequence id: caption} from a JSON object; values are strings, or objects holding `field`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--captions: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{sequence id: caption}}, got {type(data).__name__}")
    out: dict[str, str] = {}
    for seq, value in data.items():
        if isinstance(value, dict):
            if field is None:
                raise ValueError(
                    f"{path}: sequence {seq!r} maps to an object with fields {sorted(value)}; "
                    f"pick one with --caption-field"
                )
            if field not in value:
                raise ValueError(f"{path}: sequence {seq!r} has no field {field!r} (fields: {sorted(value)})")
            value = value[field]
        if not isinstance(value, str):
            raise ValueError(f"{path}: caption of sequence {seq!r} must be a string, got {type(value).__name__}")
        out[str(seq)] = value
    return out


def shard_captions(shards: list[str]) -> tuple[list[str], int, SkipStats]:
    """(non-empty captions, clips read, read stats) of every clip in `shards`; only `meta.json` is parsed."""
    stats = SkipStats()
    captions, clips = [], 0
    for url in shards:
        for sample in iter_tar(url, stats):
            key = sample["__key__"]
            if "meta.json" not in sample:
                raise ValueError(f"{url}: clip {key!r} has no meta.json member")
            try:
                meta = ClipMeta.from_json(sample["meta.json"], key)
            except (SpecError, TypeError) as e:
                raise ValueError(f"{url}: clip {key!r}, field 'meta': {e}") from e
            if not isinstance(meta.caption, str):
                raise ValueError(f"{url}: clip {key!r}, field 'meta.caption': must be a string, got {meta.caption!r}")
            clips += 1
            if meta.caption:
                captions.append(meta.caption)
    return captions, clips, stats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", nargs="*", default=[], help="clip shard folder(s) (recursive), files or globs")
    p.add_argument("--encoder", required=True, help="local folder: diffusers model root or text encoder + tokenizer")
    p.add_argument("--cache", required=True, help="prompt cache folder")
    p.add_argument("--captions", default=None, help="JSON {sequence id: caption}")
    p.add_argument("--caption-field", default=None, help="field of the caption when the JSON values are objects")
    p.add_argument(
        "--negative",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also cache Wan's standard negative prompt (default: on)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="encoder dtype (default: bf16 on CUDA, fp32 elsewhere)")
    p.add_argument("--batch-size", type=int, default=8)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    from diff4splat.models.text import NEGATIVE_PROMPT, PromptCache, TextEncoder

    if not args.shards and not args.captions:
        raise ValueError("nothing to encode: give --shards and/or --captions")
    shards = [str(s) for s in find_shards(args.shards)]
    if args.shards and not shards:
        raise FileNotFoundError(f"--shards: no .tar shards in {args.shards}")
    from_shards, clips, stats = shard_captions(shards)
    if stats.shard_errors:
        raise ValueError(f"--shards: {stats.shard_errors} unreadable shards: {stats.reasons[:3]}")
    from_file = list(load_captions(args.captions, args.caption_field).values()) if args.captions else []
    prompts = list(dict.fromkeys([*from_shards, *from_file, "", *([NEGATIVE_PROMPT] if args.negative else [])]))
    encoder = TextEncoder.from_pretrained(args.encoder, device=args.device, dtype=args.dtype)
    cache = PromptCache(args.cache, encoder_id=encoder.identity)
    n = cache.fill(encoder, prompts, batch_size=args.batch_size)
    return (
        f"{clips} clips in {len(shards)} shards ({len(from_shards)} captions), {len(from_file)} captions from "
        f"{args.captions or 'no file'}: {len(prompts)} unique prompts, {len(prompts) - n} already cached, "
        f"{n} encoded into {args.cache} (encoder {encoder.identity})"
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
