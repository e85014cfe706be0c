"""Prompt files on a fitted WinCLIP: score with other prompts, explain what the prompts do.

The image side of WinCLIP (image, crop and window embeddings; the few-shot memory) does not
depend on the prompts; only the two text prototypes do. So a set of images is encoded once
(``encode``) and scored for any number of prompt files (``score_with``), each prompt file
costing only its text embeddings (cached on disk by the encoder) and the cheap scoring.

``explain`` breaks one prompt file's image score down per image:

* the cosine similarity of the image embedding to the normal and anomalous prototypes;
* leave-one-out deltas: ``score(all prompts) - score(without state s)`` for every distinct
  state of either class, and the same for every distinct template (removed from both
  classes). A positive delta means the state or template pushes the image towards
  "anomalous"; the deltas are exact re-scorings, not gradients;
* the most anomalous window (over every scale) and the prompts nearest to its embedding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from fsiad.fewshot.methods.base import iter_batches
from fsiad.fewshot.methods.winclip import WinCLIP, text_prototypes
from fsiad.fewshot.result import AnomalyResult
from fsiad.prompts.loader import PromptSet, compose

__all__ = ["EncodedImages", "StateDelta", "ImageExplanation", "encode", "score_with", "use_prompts", "explain"]


@dataclass
class EncodedImages:
    """Per-batch outputs of ``WinCLIP.image_features`` (text-independent), kept in memory.

    Final patch tokens are dropped when the method has no few-shot memory (only WinCLIP+
    uses them), which halves the memory.
    """

    batches: list[list[torch.Tensor]]
    n_images: int


def encode(method: WinCLIP, images: torch.Tensor | Iterable[torch.Tensor]) -> EncodedImages:
    """Encode ``images`` (``[N, 3, S, S]`` or batches of it) once, in ``method.config.batch_size`` batches."""
    out, n = [], 0
    keep_patches = method.memory_patches is not None
    for batch in iter_batches(images, method.config.batch_size):
        if batch.shape[0] == 0:
            continue
        feats = list(method.image_features(batch))
        if not keep_patches:
            feats[1] = feats[1][:, :0]
        out.append(feats)
        n += batch.shape[0]
    return EncodedImages(out, n)


def use_prompts(method: WinCLIP, prompts: PromptSet) -> torch.Tensor:
    """Switch a fitted ``method`` to ``prompts`` (same class name); returns the new text features.

    Equivalent to building the method with ``MethodConfig.prompts`` set to that file: the few-shot
    memory is kept (it does not depend on the prompts).
    """
    method.prompt_set = prompts
    method.text_features = text_prototypes(method.encoder, method.class_prompts())
    return method.text_features


def score_with(method: WinCLIP, encoded: EncodedImages, text_features: torch.Tensor | None = None) -> AnomalyResult:
    """Image scores and maps of ``encoded`` with ``text_features`` (default: the method's own)."""
    saved = method.text_features
    if text_features is not None:
        method.text_features = text_features
    try:
        parts = [method.score_features(f) for f in encoded.batches]
    finally:
        method.text_features = saved
    if not parts:
        s = method.preprocess.size
        return AnomalyResult(torch.empty(0), torch.empty(0, s, s))
    return AnomalyResult.concat(parts)


@dataclass
class StateDelta:
    """Leave-one-out effect of one state or template on an image score."""

    kind: str  # "normal state", "anomalous state" or "template"
    text: str
    delta: float  # score(all) - score(without it); > 0: it pushes towards anomalous


@dataclass
class ImageExplanation:
    """What one prompt file does to one image (see the module docstring)."""

    name: str
    score: float
    sim_normal: float
    sim_anomalous: float
    deltas: list[StateDelta] = field(default_factory=list)
    window: dict[str, Any] = field(default_factory=dict)  # scale, box (y0, x0, y1, x1) px, score
    nearest: list[tuple[str, str, float]] = field(default_factory=list)  # (class, prompt, cosine)

    def top(self, kinds: Sequence[str], n: int = 3) -> list[StateDelta]:
        """The ``n`` deltas of ``kinds`` with the largest magnitude."""
        pick = [d for d in self.deltas if d.kind in kinds]
        return sorted(pick, key=lambda d: -abs(d.delta))[:n]


def _distinct(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _proto(emb: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return emb[keep].mean(0)


def explain(method: WinCLIP, images: torch.Tensor, names: Sequence[str], nearest: int = 5) -> list[ImageExplanation]:
    """Explain the image scores of a fitted ``method`` with its own prompt file.

    Args:
        method: a fitted WinCLIP (zero-shot, or WinCLIP+: the few-shot term is part of the
            score and unchanged by prompt edits).
        images: ``[N, 3, S, S]`` preprocessed images.
        names: one label per image (file names).
        nearest: how many prompts to list for the most anomalous window.

    Returns:
        One ``ImageExplanation`` per image. A state is not left out when it is the only
        distinct state of its class (nor a template when it is the only one): its class would
        have no prompt left.
    """
    if method.text_features is None:
        raise RuntimeError("winclip: call fit() before explain()")
    if len(names) != images.shape[0]:
        raise ValueError(f"{len(names)} names for {images.shape[0]} images")
    ps, category = method.prompt_set, method.config.class_name
    normal, anomalous, templates = ps.lists(category)
    name = ps.class_name(category)
    enc = method.encoder
    e_norm = enc.text_embedding(compose(normal, templates, name))
    e_anom = enc.text_embedding(compose(anomalous, templates, name))
    n_t = len(templates)
    # row r of a class's embeddings is state r // n_t, template r % n_t
    st_n = [normal[r // n_t] for r in range(e_norm.shape[0])]
    st_a = [anomalous[r // n_t] for r in range(e_anom.shape[0])]
    tp_n = [templates[r % n_t] for r in range(e_norm.shape[0])]
    tp_a = [templates[r % n_t] for r in range(e_anom.shape[0])]

    encoded = encode(method, images)
    full = score_with(method, encoded).image_scores
    variants: list[tuple[str, str, torch.Tensor]] = []
    all_n, all_a = torch.ones(len(st_n), dtype=torch.bool), torch.ones(len(st_a), dtype=torch.bool)
    for kind, states, owner in (("normal state", st_n, 0), ("anomalous state", st_a, 1)):
        distinct = _distinct(states)
        if len(distinct) < 2:
            continue
        for s in distinct:
            keep = torch.tensor([x != s for x in states])
            kn, ka = (keep, all_a) if owner == 0 else (all_n, keep)
            variants.append((kind, s, torch.stack([_proto(e_norm, kn), _proto(e_anom, ka)])))
    if len(_distinct(templates)) >= 2:
        for t in _distinct(templates):
            kn, ka = torch.tensor([x != t for x in tp_n]), torch.tensor([x != t for x in tp_a])
            variants.append(("template", t, torch.stack([_proto(e_norm, kn), _proto(e_anom, ka)])))
    loo = [score_with(method, encoded, F.normalize(p, dim=-1)).image_scores for _, _, p in variants]

    text = method.text_features.float()
    temp = float(method.opts["temperature"])
    all_prompts = [("normal", p) for p in compose(normal, templates, name)] + [
        ("anomalous", p) for p in compose(anomalous, templates, name)]
    e_all = F.normalize(torch.cat([e_norm, e_anom]).float(), dim=-1)
    grid_w = enc.grid[1]
    patch = enc.patch_size
    out: list[ImageExplanation] = []
    n_scales = len(method.scales)
    flat = [(b, i) for b, feats in enumerate(encoded.batches) for i in range(feats[0].shape[0])]
    for j, (b, i) in enumerate(flat):
        feats = encoded.batches[b]
        img = F.normalize(feats[0][i].float(), dim=-1)
        sims = img @ text.T.to(img.device)
        best = (-1.0, 0, 0, None)
        for s_idx in range(n_scales):
            w = F.normalize(feats[2 + s_idx][i].float(), dim=-1)
            probs = (w @ text.T.to(w.device) / temp).softmax(-1)[:, 1]
            k = int(probs.argmax())
            if float(probs[k]) > best[0]:
                best = (float(probs[k]), s_idx, k, w[k])
        score_w, s_idx, k, w_emb = best
        side = method.scales[s_idx]
        top_left = int(method.windows[s_idx][k][0])
        y0, x0 = (top_left // grid_w) * patch, (top_left % grid_w) * patch
        cos = e_all.to(w_emb.device) @ w_emb
        order = cos.argsort(descending=True).tolist()
        seen: set[str] = set()
        near: list[tuple[str, str, float]] = []
        for r in order:
            if all_prompts[r][1] in seen:
                continue
            seen.add(all_prompts[r][1])
            near.append((all_prompts[r][0], all_prompts[r][1], float(cos[r])))
            if len(near) == nearest:
                break
        deltas = [StateDelta(kind, item, float(full[j] - sc[j])) for (kind, item, _), sc in zip(variants, loo, strict=True)]
        out.append(ImageExplanation(
            name=str(names[j]), score=float(full[j]), sim_normal=float(sims[0]), sim_anomalous=float(sims[1]),
            deltas=deltas,
            window={"scale": side, "box": (y0, x0, y0 + side * patch, x0 + side * patch), "score": score_w},
            nearest=near))
    return out
