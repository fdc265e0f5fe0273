"""Text conditioning of the video model: the frozen UMT5 encoder, the standard negative prompt, and an on-disk cache.

`TextEncoder` wraps transformers' `UMT5EncoderModel` and its tokenizer, loaded from a local folder (the diffusers
layout `<Wan2.2-TI2V-5B-Diffusers>/text_encoder` + `/tokenizer`, or one folder holding both). `encode(prompts)` is
diffusers' `WanPipeline._get_t5_prompt_embeds`: prompts cleaned (HTML unescape twice, whitespace collapsed; no
ftfy), tokenised to `max_len` = 512 with the EOS token, encoded with the attention mask, and every row beyond a
prompt's true token count set to exactly zero.

Embeddings are computed once (`python -m datamodules.encode_text`) and stored in a `PromptCache`: one
`.safetensors` file per (encoder, prompt) holding only the unpadded rows [L, D]; training pads them again with
`pad_prompt_embeds`.

    enc = TextEncoder.from_pretrained("/ckpt/Wan2.2-TI2V-5B-Diffusers", device="cuda")
    cache = PromptCache("/data/prompt_cache")
    cache.fill(enc, ["a drone flies over a lake", "", NEGATIVE_PROMPT])
    emb = pad_prompt_embeds([cache.load("a drone flies over a lake")])    # [1, 512, 4096]
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diff4splat.files import atomic_write_text

__all__ = [
    "NEGATIVE_PROMPT",
    "MissingPromptError",
    "PromptCache",
    "TextEncoder",
    "clean_prompt",
    "pad_prompt_embeds",
    "save_tiny_text_encoder",
]

# The standard Wan negative prompt (Chinese), verbatim from the Wan2.2 repository's `wan/configs/shared_config.py`
# (`wan_shared_cfg.sample_neg_prompt`, e.g. github.com/tolgacangoz/Wan2.2 at 31805a3, a fork of Wan-Video/Wan2.2);
# the same string is `chinese_sample_neg_prompt` in Wan2.1-based inference scripts. Diff4Splat caches its embedding
# as `resources/negative_embed.npy` for the unconditional branch of CFG (reference §6.1, §6.6).
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

MAX_LEN = 512  # Wan's text_len: the DiT's cross-attention always sees 512 rows

_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning without ftfy: HTML entities unescaped twice, runs of whitespace collapsed, stripped."""
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


def _resolve_folders(path: Path) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder) of a diffusers model root or of one folder holding both."""
    if (path / "text_encoder" / "config.json").is_file():
        enc = path / "text_encoder"
        tok = path / "tokenizer" if (path / "tokenizer").is_dir() else path
        return enc, tok
    if (path / "config.json").is_file():
        return path, path
    raise FileNotFoundError(
        f"text encoder: expected a diffusers model root with text_encoder/config.json and tokenizer/, or a folder "
        f"with config.json and the tokenizer files; found neither in {path}"
    )


class TextEncoder(nn.Module):
    """Frozen UMT5 encoder + tokenizer: prompts -> [B, max_len, D] embeddings, zero beyond each prompt's length.

    Args:
        encoder: a `transformers.UMT5EncoderModel` (or any encoder with the same call signature).
        tokenizer: its tokenizer (adds EOS; pads with the pad token).
        max_len: tokens per prompt (Wan: 512); longer prompts are truncated.
        identity: a string that names these weights in caches (`PromptCache` keys); by default built from the
            config, `max_len` and a fingerprint of a few weight rows, so two different encoders never share keys.
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, max_len: int = MAX_LEN, identity: str | None = None):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_len = int(max_len)
        self.identity = identity or self._default_identity()

    @property
    def dim(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def _default_identity(self) -> str:
        cfg = self.encoder.config
        h = hashlib.sha256()
        emb = self.encoder.get_input_embeddings().weight
        for t in (emb[: min(8, emb.shape[0])], self.encoder.encoder.final_layer_norm.weight):
            h.update(t.detach().float().cpu().numpy().tobytes())
        h.update(str(len(self.tokenizer)).encode())
        name = getattr(cfg, "model_type", "t5")
        return f"{name}-d{cfg.d_model}-l{cfg.num_layers}-v{cfg.vocab_size}-max{self.max_len}-{h.hexdigest()[:12]}"

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        max_len: int = MAX_LEN,
    ) -> TextEncoder:
        """Load from a local folder: a diffusers model root (`text_encoder/` + `tokenizer/`) or one folder with both.

        `dtype` None: bfloat16 on CUDA, float32 elsewhere (strings like "bf16", "float32" are accepted).
        """
        from transformers import AutoTokenizer, UMT5EncoderModel

        enc_dir, tok_dir = _resolve_folders(Path(path))
        device = torch.device(device)
        dtype = _as_dtype(dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"text encoder: no loadable tokenizer in {tok_dir} ({e})") from e
        encoder = UMT5EncoderModel.from_pretrained(str(enc_dir), dtype=dtype)
        return cls(encoder.to(device), tokenizer, max_len=max_len)

    @classmethod
    def tiny(cls, folder: str | os.PathLike, seed: int = 0, **kw: Any) -> TextEncoder:
        """A tiny random-weight UMT5 with a tokenizer trained on the fly, saved to `folder` in the diffusers layout
        and loaded back through `from_pretrained` (tests, CPU smoke runs). `kw` go to `save_tiny_text_encoder`."""
        save_tiny_text_encoder(folder, seed=seed, **kw)
        return cls.from_pretrained(folder)

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask, both [B, max_len], of the cleaned prompts."""
        out = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.max_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_ids"], out["attention_mask"]

    @torch.no_grad()
    def encode_unpadded(self, prompts: Sequence[str]) -> list[Tensor]:
        """Per prompt the [L_i, D] rows of its tokens (L_i = true token count incl. EOS, at most max_len)."""
        if isinstance(prompts, str):
            raise TypeError("encode expects a list of prompts, got one string")
        if not prompts:
            return []
        ids, mask = self.tokenize(prompts)
        lengths = mask.gt(0).sum(dim=1).tolist()
        hidden = self.encoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        return [h[:n] for h, n in zip(hidden, lengths, strict=True)]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:  # -> [B, max_len, D], zero beyond each prompt's length
        """Embeddings as Wan's pipelines feed them to the DiT: [B, max_len, D] in the encoder's dtype and device."""
        return pad_prompt_embeds(self.encode_unpadded(prompts), self.max_len)


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(names)}")
    return names[dtype]


def pad_prompt_embeds(embeds: Sequence[Tensor], max_len: int = MAX_LEN) -> Tensor:
    """[L_i, D] rows per prompt -> [B, max_len, D], zero-padded (rows beyond max_len are dropped)."""
    if not embeds:
        raise ValueError("pad_prompt_embeds: no embeddings")
    D = embeds[0].shape[-1]
    out = embeds[0].new_zeros(len(embeds), max_len, D)
    for i, e in enumerate(embeds):
        if e.ndim != 2 or e.shape[-1] != D:
            raise ValueError(f"pad_prompt_embeds: embedding {i} has shape {tuple(e.shape)}, expected [L, {D}]")
        n = min(e.shape[0], max_len)
        out[i, :n] = e[:n]
    return out


# ------------------------------------------------------------------------------------------------------ tiny model


_TINY_CORPUS = [
    "a drone flies over a lake at sunset",
    "the camera moves slowly through a quiet street with parked cars and tall trees",
    "a red ball rolls across a wooden floor in a bright living room",
    "aerial view of mountains covered with snow, clouds drifting in the blue sky",
    "a person walks a dog along the beach while waves break on the sand",
    "close up of coloured blobs moving in front of a textured wall",
    "a synthetic scene with a checkerboard ground plane and spinning objects",
    "walking backwards, static, blurred details, worst quality, low quality, ugly",
    NEGATIVE_PROMPT,
]


def tiny_unigram_vocab(corpus: Sequence[str], vocab_size: int) -> list[tuple[str, float]]:
    """A Unigram vocabulary of `vocab_size` (piece, log-probability) pairs from `corpus`, the same on every call.

    Pieces: the specials (pad 0, EOS 1, unk 2), then the most frequent characters of the Metaspace-split words, then
    the most frequent whole words (ties broken by the piece itself). `tokenizers`' UnigramTrainer is not used: its
    result changes from run to run (hash-map order), so two tiny encoders built alike would tokenize differently.
    """
    import unicodedata
    from collections import Counter

    words = Counter("\u2581" + w for text in corpus for w in unicodedata.normalize("NFKC", text).split())
    chars = Counter()
    for w, n in words.items():
        for ch in w:
            chars[ch] += n
    room = vocab_size - 3
    if room < 1:
        raise ValueError(f"tiny tokenizer: vocab_size must be at least 4, got {vocab_size}")
    ranked_chars = sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))[:room]
    ranked_words = sorted(((w, n) for w, n in words.items() if len(w) > 1), key=lambda kv: (-kv[1], kv[0]))[
        : room - len(ranked_chars)
    ]
    total = sum(chars.values()) + sum(words.values())
    pieces = [(p, math.log(n / total)) for p, n in ranked_chars + ranked_words]
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces]


def save_tiny_text_encoder(
    folder: str | os.PathLike,
    *,
    seed: int = 0,
    d_model: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: int = 64,
    vocab_size: int = 160,
    corpus: Iterable[str] | None = None,
) -> Path:
    """Write a tiny random UMT5 encoder (`folder/text_encoder`) and a Unigram tokenizer built from `corpus`
    (`folder/tokenizer`, T5-style ids: pad 0, EOS 1, unk 2; EOS appended) in the diffusers layout. Returns `folder`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    tok = Tokenizer(models.Unigram(tiny_unigram_vocab(list(corpus or _TINY_CORPUS), vocab_size), unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    assert (tok.token_to_id("<pad>"), tok.token_to_id("</s>"), tok.token_to_id("<unk>")) == (0, 1, 2)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=MAX_LEN
    )
    fast.save_pretrained(str(folder / "tokenizer"))

    torch.manual_seed(seed)
    cfg = UMT5Config(
        vocab_size=tok.get_vocab_size(),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        is_encoder_decoder=False,
    )
    UMT5EncoderModel(cfg).save_pretrained(str(folder / "text_encoder"))
    return folder


# ------------------------------------------------------------------------------------------------------ cache


_INDEX = "encoders.json"


class MissingPromptError(KeyError):
    """A prompt has no cached embedding (the message names the prompt and the cache folder)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PromptCache:
    """Prompt embeddings on disk: `root/<sha256(encoder identity + NUL + prompt)>.safetensors`, one per prompt.

    Each file holds the unpadded rows `embeds` [L, D] (bfloat16 by default) and metadata (prompt, length, encoder),
    so encoders never collide and a file can be traced back to its prompt. `root/encoders.json` lists the encoders
    that wrote to the folder (identity -> dim, dtype); with `encoder_id=None` a reader uses the only one listed.

    Args:
        root: cache folder (created on the first save).
        encoder_id: identity of the encoder whose embeddings are read/written (`TextEncoder.identity`); None: the
            single encoder of `encoders.json` (set by `fill` when the folder is still empty).
        dtype: storage dtype of saved embeddings (bfloat16 or float16).
    """

    def __init__(self, root: str | os.PathLike, encoder_id: str | None = None, dtype: torch.dtype = torch.bfloat16):
        self.root = Path(root)
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"PromptCache: dtype must be bfloat16, float16 or float32, got {dtype}")
        self.dtype = dtype
        self._encoder_id = encoder_id

    def encoders(self) -> dict[str, dict[str, Any]]:
        """The encoders that wrote to this folder: {identity: {"dim": D, "dtype": name}}."""
        path = self.root / _INDEX
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"prompt cache {self.root}: {_INDEX} is not valid JSON ({e})") from e
        return data.get("encoders", {})

    @property
    def encoder_id(self) -> str:
        if self._encoder_id is None:
            ids = sorted(self.encoders())
            if len(ids) != 1:
                found = "no encoder has written to it yet" if not ids else f"it holds several encoders {ids}"
                raise ValueError(f"prompt cache {self.root}: pass encoder_id ({found}; run datamodules.encode_text)")
            self._encoder_id = ids[0]
        return self._encoder_id

    def key(self, prompt: str) -> str:
        """File stem of a prompt's embedding for this cache's encoder."""
        return hashlib.sha256(f"{self.encoder_id}\0{prompt}".encode()).hexdigest()

    def path(self, prompt: str) -> Path:
        return self.root / f"{self.key(prompt)}.safetensors"

    def has(self, prompt: str) -> bool:
        return self.path(prompt).is_file()

    def load(self, prompt: str) -> Tensor:  # -> [L, D] in the storage dtype
        """The cached rows of `prompt`; a clear error naming the prompt and the folder when it is missing."""
        from safetensors import safe_open

        path = self.path(prompt)
        if not path.is_file():
            raise KeyError(
                f"prompt cache {self.root}: no embedding of prompt {prompt!r} for encoder {self.encoder_id!r} "
                f"(expected {path.name}; run `python -m datamodules.encode_text` over these captions)"
            )
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            emb = f.get_tensor("embeds")
        if meta.get("prompt") != prompt or meta.get("encoder") != self.encoder_id:
            raise ValueError(
                f"prompt cache {path}: metadata (prompt {meta.get('prompt')!r}, encoder "
                f"{meta.get('encoder')!r}) does not match the requested prompt {prompt!r}"
            )
        return emb

    def save(self, prompt: str, emb: Tensor) -> Path:
        """Store [L, D] rows for `prompt` (atomically: written to a temporary name, then renamed)."""
        from diff4splat.weights import save_safetensors

        if emb.ndim != 2:
            raise ValueError(f"PromptCache.save: embedding of {prompt!r} must be [L, D], got {tuple(emb.shape)}")
        self.root.mkdir(parents=True, exist_ok=True)
        self._register(int(emb.shape[-1]))
        meta = {"prompt": prompt, "length": str(emb.shape[0]), "encoder": self.encoder_id}
        embeds = {"embeds": emb.detach().to("cpu", self.dtype).contiguous()}
        return save_safetensors(embeds, self.path(prompt), meta, fsync=False)

    def _register(self, dim: int) -> None:
        encoders = self.encoders()
        info = encoders.get(self.encoder_id)
        if info is not None:
            if info["dim"] != dim:
                raise ValueError(
                    f"prompt cache {self.root}: encoder {self.encoder_id!r} has dim {info['dim']}, got {dim}"
                )
            return
        encoders[self.encoder_id] = {"dim": dim, "dtype": str(self.dtype).removeprefix("torch.")}
        atomic_write_text(self.root / _INDEX, json.dumps({"encoders": encoders}, indent=1, sort_keys=True), fsync=False)

    def fill(self, encoder: TextEncoder, prompts: Iterable[str], batch_size: int = 8) -> int:
        """Encode and save the prompts that are not cached yet (duplicates once); returns how many were encoded."""
        if batch_size < 1:
            raise ValueError(f"PromptCache.fill: batch_size must be >= 1, got {batch_size}")
        if self._encoder_id is None:
            self._encoder_id = encoder.identity
        elif self._encoder_id != encoder.identity:
            raise ValueError(
                f"prompt cache {self.root}: cache is for encoder {self._encoder_id!r}, got encoder {encoder.identity!r}"
            )
        missing = [p for p in dict.fromkeys(prompts) if not self.has(p)]
        for i in range(0, len(missing), batch_size):
            chunk = missing[i : i + batch_size]
            for p, e in zip(chunk, encoder.encode_unpadded(chunk), strict=True):
                self.save(p, e)
        return len(missing)
