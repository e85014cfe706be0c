"""CLIP image/text encoder on open_clip, with masked-token window encoding (WinCLIP).

Registered names (``fsiad models``):

* ``clip_vitb16plus_240`` - open_clip ``ViT-B-16-plus-240`` / ``laion400m_e31`` (WinCLIP's
  backbone): 240 px, 15x15 patches, width 896, embedding 640.
* ``clip_vitb16_openai`` - OpenAI ``ViT-B-16`` (224 px, QuickGELU).
* ``clip_vitl14_336_openai`` - OpenAI ``ViT-L-14-336`` (336 px, QuickGELU).

Any other open_clip architecture / pretrained tag: ``create_clip_encoder(arch, pretrained)``
(or encoder name ``clip:ARCH/TAG`` in ``MethodConfig.encoder``); a local checkpoint by path
with ``weights=PATH``. Only open_clip ``VisionTransformer`` towers are supported.

This module holds the encoder and its construction; checkpoint discovery and reading live in
``clip_checkpoint.py``, the text-embedding cache in ``clip_text.py`` (names re-exported here).

open_clip 3.3 ``VisionTransformer`` forward: ``conv1`` -> prepend CLS -> ``+ positional
embedding`` -> ``patch_dropout`` (identity in eval) -> ``ln_pre`` -> ``transformer`` ->
``_pool`` (``ln_post`` then the CLS token for ``pool_type='tok'``; attention pooling for
CoCa-style towers) -> ``@ proj``. Window encoding keeps the CLS token and a subset of patch
tokens taken right after the positional embedding, and runs the rest of that path on the
shorter sequence (as WinCLIP's masked-token windows).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from fsiad.fewshot.encoders.base import Encoder, WeightInfo
from fsiad.fewshot.encoders.clip_checkpoint import build_model, clip_weight_spec
from fsiad.fewshot.encoders.clip_text import read_text_cache, text_cache_dir, text_cache_key, write_text_cache
from fsiad.fewshot.encoders.registry import RANDOM_SEED, register_encoder
from fsiad.fewshot.encoders.weights import WeightsNotFoundError, WeightSpec, random_weights, resolve_weights
from fsiad.fewshot.preprocess import Preprocess
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

__all__ = ["CLIPEncoder", "CLIP_MODELS", "create_clip_encoder", "clip_weight_spec", "text_cache_dir"]

#: registry name -> (open_clip architecture, pretrained tag, quick_gelu, description)
CLIP_MODELS: dict[str, tuple[str, str, bool, str]] = {
    "clip_vitb16plus_240": ("ViT-B-16-plus-240", "laion400m_e31", False,
                            "OpenCLIP ViT-B/16+ 240px, LAION-400M e31 (WinCLIP default)"),
    "clip_vitb16_openai": ("ViT-B-16", "openai", True, "OpenAI CLIP ViT-B/16 224px"),
    "clip_vitl14_336_openai": ("ViT-L-14-336", "openai", True, "OpenAI CLIP ViT-L/14 336px"),
}
DEFAULT_CHUNK_TOKENS = 16384
_TEXT_BATCH = 64


class CLIPEncoder(Encoder):
    """open_clip CLIP model as an fsiad encoder.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` with a ``VisionTransformer`` tower.
        tokenizer: open_clip tokenizer (``list[str] -> LongTensor[P, ctx]``).
        name: registry name (for metadata).
        model_id: architecture identity (name + tag or config), part of the text-cache key.
        weights: where the weights came from.
        device, precision: see ``Encoder``.
        chunk_tokens: most tokens (sequences x length) per transformer call in window encoding.
        text_cache: cache text embeddings on disk under ``text_cache_dir()``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, name: str, model_id: str, weights: WeightInfo,
                 device: str = "cpu", precision: str = "fp32", chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 text_cache: bool = True) -> None:
        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer):
            raise ValueError(f"{name}: only open_clip VisionTransformer image towers are supported, "
                             f"got {type(visual).__name__}")
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        side = int(visual.image_size[0])
        super().__init__(Preprocess(side, interpolation="bicubic"), mean, std, weights, device, precision)
        self.name = name
        self.model_id = model_id
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.patch_size = int(visual.patch_size[0])
        self.grid = (int(visual.grid_size[0]), int(visual.grid_size[1]))
        self.chunk_tokens = int(chunk_tokens)
        self.text_cache = text_cache
        self._text_memo: dict[str, torch.Tensor] = {}
        self._plain_blocks = all(_is_plain_block(b) for b in visual.transformer.resblocks)
        # pooled-only forwards (windows, crops) may skip the non-CLS rows of the last block
        self._cls_last = (self._plain_blocks and getattr(visual, "attn_pool", None) is None
                          and getattr(visual, "pool_type", "tok") == "tok"
                          and not getattr(visual, "final_ln_after_pool", False))

    # -- structure ------------------------------------------------------------------------
    @property
    def visual(self) -> VisionTransformer:
        return self.model.visual

    @property
    def layers(self) -> list[int | str]:
        return list(range(len(self.visual.transformer.resblocks)))

    @property
    def default_layers(self) -> list[int | str]:
        return [self.layers[-1]]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def embed_dim(self) -> int:
        return int(self.visual.output_dim)

    # -- image side -----------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        side = self.preprocess.size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (side, side):
            raise ValueError(f"{self.name}: images must be [N, 3, {side}, {side}], got {tuple(images.shape)}")

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Token sequence after the positional embedding: ``[N, 1 + h*w, width]`` (CLS first).

        Runs under the caller's grad/autocast context.
        """
        self._check_images(images)
        v = self.visual
        x = v.conv1(self.normalize(images))
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], 1) + v.positional_embedding.to(x.dtype)

    def _encode_sequences(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ln_pre`` -> transformer -> pool -> proj on ``[B, L, width]``: (``[B, D]``, tokens)."""
        v = self.visual
        x = v.ln_pre(seq)
        if self._plain_blocks:
            for block in v.transformer.resblocks:
                x = _block_forward(block, x)
        else:
            x = v.transformer(x)
        pooled, tokens = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled, tokens

    def _encode_pooled(self, seq: torch.Tensor) -> torch.Tensor:
        """Projected pooled embedding ``[B, D]`` of ``[B, L, width]`` (same as ``_encode_sequences[0]``).

        With plain blocks and CLS-token pooling, the last block is evaluated for the CLS row
        only: its keys and values still come from every token, but the query, output
        projection and MLP of the other rows (never read by the pooling) are skipped. Same
        operations on the rows that matter, so the embedding equals the full forward up to
        float rounding of differently shaped matrix products.
        """
        if not self._cls_last:
            return self._encode_sequences(seq)[0]
        v = self.visual
        x = v.ln_pre(seq)
        blocks = v.transformer.resblocks
        for block in blocks[:-1]:
            x = _block_forward(block, x)
        x = v.ln_post(_block_forward_cls(blocks[-1], x)[:, 0])
        return x @ v.proj if v.proj is not None else x

    def _encode_chunked(self, seq: torch.Tensor) -> torch.Tensor:
        per = max(1, self.chunk_tokens // seq.shape[1])
        return torch.cat([self._encode_pooled(seq[i : i + per]).float() for i in range(0, seq.shape[0], per)])

    def image_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One plain forward: projected image embedding ``[N, D]`` and final patch tokens
        (after ``ln_post``, unprojected) ``[N, h, w, width]``, both float32."""
        with torch.inference_mode(), self.autocast():
            pooled, tokens = self._encode_sequences(self.embed_tokens(images))
        n, (h, w) = images.shape[0], self.grid
        return pooled.float(), tokens.float().reshape(n, h, w, -1)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Projected CLIP image embedding ``[N, D]`` (as ``model.encode_image``, unnormalised)."""
        with torch.inference_mode(), self.autocast():
            return self._encode_pooled(self.embed_tokens(images)).float()

    def window_embeddings_from_tokens(self, tokens: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Masked-token window encoding from ``embed_tokens`` output.

        Args:
            tokens: ``[N, 1 + P, width]`` from ``embed_tokens``.
            windows: ``LongTensor[W, m]`` patch indices (row-major) kept by each window.

        Returns:
            ``[N, W, D]`` float32: for every image and window, CLS + the ``m`` window tokens
            through ``ln_pre`` -> transformer -> pool -> proj, all ``N*W`` sequences batched
            (in chunks of at most ``chunk_tokens`` tokens).
        """
        n, length, width = tokens.shape
        if windows.ndim != 2 or windows.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{self.name}: windows must be an integer tensor [W, m], got {tuple(windows.shape)}")
        if windows.numel() and (int(windows.min()) < 0 or int(windows.max()) >= length - 1):
            raise ValueError(f"{self.name}: window indices must lie in [0, {length - 1})")
        n_win, m = windows.shape
        idx = windows.to(tokens.device).long() + 1
        picked = tokens[:, idx.reshape(-1)].reshape(n, n_win, m, width)
        cls = tokens[:, :1].unsqueeze(1).expand(n, n_win, 1, width)
        seq = torch.cat([cls, picked], 2).reshape(n * n_win, m + 1, width)
        return self._encode_chunked(seq).reshape(n, n_win, -1)

    def window_embeddings(self, images: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """``[N, W, D]`` masked-token embeddings of ``windows`` (``LongTensor[W, m]``)."""
        with torch.inference_mode(), self.autocast():
            return self.window_embeddings_from_tokens(self.embed_tokens(images), windows)

    def encode_all(self, images: torch.Tensor, windows: Sequence[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Image embedding, final patch tokens and window embeddings from one token embedding.

        Args:
            images: ``[N, 3, S, S]`` in ``[0, 1]``.
            windows: one ``LongTensor[W_s, m_s]`` per window scale.

        Returns:
            ``(image [N, D], patches [N, h*w, width] after ln_post, [window [N, W_s, D]])``,
            float32 on ``self.device``.
        """
        with torch.inference_mode(), self.autocast():
            tokens = self.embed_tokens(images)
            pooled, patches = self._encode_sequences(tokens)
            wins = [self.window_embeddings_from_tokens(tokens, w) for w in windows]
        return pooled.float(), patches.float(), wins

    def cached(self, tag: tuple, images: torch.Tensor,
               compute: Callable[[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
        """``compute(images)`` (list of ``[N, ...]`` tensors), memoised per image and ``tag`` in
        the feature cache when ``enable_cache`` was called (values then float32 on CPU)."""
        if self._cache is None:
            return compute(images)
        key = (self.model_id, self.weights.checksum, self.precision, *tag)
        return self._cache.get_or_compute(key, images, lambda x: [t.float().cpu() for t in compute(x)])

    def _patch_features(self, images: torch.Tensor, layers: Sequence[int | str]) -> list[torch.Tensor]:
        x = self.visual.ln_pre(self.embed_tokens(images))
        wanted, out = {int(layer) for layer in layers}, {}
        for i, block in enumerate(self.visual.transformer.resblocks[: max(wanted) + 1]):
            x = block(x)
            if i in wanted:
                out[i] = x[:, 1:]
        h, w = self.grid
        return [out[int(layer)].float().reshape(images.shape[0], h, w, -1) for layer in layers]

    # -- text side ------------------------------------------------------------------------
    def _text_key(self, prompts: Sequence[str]) -> str:
        return text_cache_key(self.model_id, self.weights.checksum, prompts)

    def text_embedding(self, prompts: Sequence[str]) -> torch.Tensor:
        """Projected, unnormalised text embeddings ``[P, D]`` float32 (fp32 forward).

        Cached in memory and on disk, keyed by model, weights checksum and the exact prompt
        texts (so editing a prompt file invalidates the entry). Disk entries are
        ``.safetensors`` files (no pickled objects); an unreadable entry is recomputed.
        """
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError(f"{self.name}: prompts must be a non-empty list of non-empty strings")
        key = self._text_key(prompts)
        if key in self._text_memo:
            return self._text_memo[key].clone()
        path = text_cache_dir() / f"{key}.safetensors"
        emb = read_text_cache(path) if self.text_cache else None
        if emb is None or emb.shape != (len(prompts), self.embed_dim):
            emb = self._encode_text(prompts)
            if self.text_cache:
                write_text_cache(emb, path)
        self._text_memo[key] = emb
        return emb.clone()

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(prompts), _TEXT_BATCH):
                toks = self.tokenizer(prompts[i : i + _TEXT_BATCH]).to(self.device)
                out.append(self.model.encode_text(toks).float().cpu())
        return torch.cat(out)

    def describe(self) -> dict:
        return {**super().describe(), "model_id": self.model_id, "image_size": self.preprocess.size}


def _is_plain_block(block: torch.nn.Module) -> bool:
    """A standard open_clip self-attention block that ``_block_forward`` reproduces exactly."""
    a = getattr(block, "attn", None)
    return (type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
            and isinstance(a, torch.nn.MultiheadAttention) and a.batch_first and a._qkv_same_embed_dim
            and a.bias_k is None and not a.add_zero_attn)


def _block_forward(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for ``[B, L, C]`` without ``nn.MultiheadAttention``'s sequence-first transpose.

    The projections then see contiguous ``[B*L, C]`` inputs (one GEMM each), which matters for
    the many short window sequences, notably under bf16 autocast on CPU where the transposed
    path falls back to slow batched matmuls. Same operations, same weights.
    """
    a = block.attn
    b, n, c = x.shape
    heads = a.num_heads
    qkv = F.linear(block.ln_1(x), a.in_proj_weight, a.in_proj_bias)
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
    x = x + block.ls_1(F.linear(o, a.out_proj.weight, a.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _block_forward_cls(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The CLS row of ``block(x)``: ``[B, L, C]`` -> ``[B, 1, C]`` (keys/values from all rows)."""
    a = block.attn
    b, n, c = x.shape
    heads = a.num_heads
    y = block.ln_1(x)
    bias = a.in_proj_bias
    kv = F.linear(y, a.in_proj_weight[c:], None if bias is None else bias[c:])
    k, v = kv.reshape(b, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    q = F.linear(y[:, :1], a.in_proj_weight[:c], None if bias is None else bias[:c])
    q = q.reshape(b, 1, heads, c // heads).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, c)
    x0 = x[:, :1] + block.ls_1(F.linear(o, a.out_proj.weight, a.out_proj.bias))
    return x0 + block.ls_2(block.mlp(block.ln_2(x0)))


def create_clip_encoder(arch: str | dict, pretrained: str | None = None, *, weights: str | Path | None = None,
                        device: str = "cpu", precision: str = "fp32", image_size: int | None = None,
                        allow_random: bool = False, quick_gelu: bool | None = None, name: str | None = None,
                        seed: int = RANDOM_SEED, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                        text_cache: bool = True) -> CLIPEncoder:
    """Build a CLIP encoder for any open_clip architecture.

    Args:
        arch: open_clip model name (``ViT-B-16-plus-240``) or a ``CLIP(**cfg)`` config dict
            (random init only; used by tests for tiny models).
        pretrained: open_clip pretrained tag (``laion400m_e31``, ``openai``); enables the hub step.
        weights: explicit local checkpoint (file or directory).
        allow_random: random init with ``seed`` when no ``weights`` are given (tests only).
        quick_gelu: force QuickGELU (``None`` = True for OpenAI tags).

    Raises:
        WeightsNotFoundError: no weights and ``allow_random`` is False.
    """
    tag_id = pretrained or "none"
    if isinstance(arch, dict):
        cfg_id = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]
        model_id, key = f"custom-{cfg_id}", name or f"clip:custom-{cfg_id}"
    else:
        model_id, key = f"{arch}/{tag_id}", name or f"clip:{arch}/{tag_id}"
    if image_size is not None:
        model_id += f"@{image_size}"
    quick = quick_gelu if quick_gelu is not None else (pretrained == "openai")
    if allow_random and weights is None:
        info = random_weights(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(arch, info, quick, image_size, pretrained)
    else:
        if isinstance(arch, dict):
            raise WeightsNotFoundError(WeightSpec(key=key, filename=f"{model_id}.pt"), "custom configs are random-init only")
        info = resolve_weights(clip_weight_spec(arch, pretrained, key), weights)
        model = build_model(arch, info, quick, image_size, pretrained)
    tok_arch = "ViT-B-16" if isinstance(arch, dict) else arch
    ctx = int(model.context_length) if hasattr(model, "context_length") else None
    tokenizer = _tokenizer(tok_arch, ctx)
    enc = CLIPEncoder(model, tokenizer, name=key, model_id=model_id, weights=info, device=device,
                      precision=precision, chunk_tokens=chunk_tokens, text_cache=text_cache)
    return enc.to(device).eval()


def _tokenizer(arch: str, context_length: int | None = None):
    """open_clip tokenizer of ``arch``; a one-line error when it would need the (offline) hub."""
    try:
        if context_length:
            return open_clip.get_tokenizer(arch, context_length=context_length)
        return open_clip.get_tokenizer(arch)
    except OSError as exc:
        raise ValueError(f"{arch}: its text tokenizer is not available offline "
                         f"(open_clip fetches it from the Hugging Face hub): {type(exc).__name__}") from None


def _factory(name: str):
    arch, tag, quick, _ = CLIP_MODELS[name]

    def factory(info: WeightInfo, *, device: str, precision: str, image_size: int | None) -> CLIPEncoder:
        model = build_model(arch, info, quick, image_size, tag)
        model_id = f"{arch}/{tag}" + (f"@{image_size}" if image_size is not None else "")
        return CLIPEncoder(model, _tokenizer(arch), name=name, model_id=model_id, weights=info,
                           device=device, precision=precision)

    return factory


for _name, (_arch, _tag, _quick, _desc) in CLIP_MODELS.items():
    register_encoder(_name, _factory(_name), clip_weight_spec(_arch, _tag, _name), _desc)
