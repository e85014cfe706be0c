"""WinCLIP (zero-shot) and WinCLIP+ (few-shot), Jeong et al., CVPR 2023.

Zero-shot (``fit`` with no images):
    * Text: compositional prompt ensemble (``prompts/``); the unnormalised CLIP text embeddings
      of each class are averaged (as anomalib / WinCLIP-pytorch), then L2-normalised.
      Class score of an embedding ``f``: ``softmax(cos(f, [t_normal, t_anomalous]) / 0.07)[1]``.
    * Windows: k x k patch windows at stride 1 for every scale (default 2 and 3), encoded by
      masked-token re-encoding (CLS + the window's tokens after the positional embedding).
      Per patch: harmonic mean of the scores of all windows covering it; the map is the
      harmonic mean over {image score broadcast, one map per scale}.
    * Image score: class score of the image embedding; with ``multi_crop`` (default on) the
      mean class score over the full image and five crops (see deviations).
Few-shot WinCLIP+ (``fit`` with K images):
    * Reference memory: window embeddings (every scale) and final patch tokens (after
      ``ln_post``, unprojected, as open_clip's ``output_tokens``) of the K shots.
    * Association per query entry: ``min over all memory entries (1 - cos) / 2``; window maps
      go onto patches by harmonic mean; patch and window maps are averaged arithmetically.
    * Fusion (paper eq. 5): ``map = (zero-shot map + few-shot map) / 2``,
      ``score = (zero-shot score + max few-shot map) / 2`` (max taken on the patch grid).
Maps: patch grid -> bilinear upsampling to the input side -> Gaussian blur (sigma 4).

Deviations from the paper (documented choices):
    * Multi-crop: the paper reports +1.0 zero-shot AUROC on MVTec AD from a multi-crop step but
      public code has none and its geometry is not specified; fsiad averages the anomalous
      probability of the full image and the four corner + centre crops of side
      ``crop_ratio * S`` (default 0.75) resized back to S (bicubic). Option ``multi_crop``.
      It changes the image score only (the map's image-scale term uses the full image). On by
      default on the strength of the paper's ablation; not measured here (no real weights).
    * Text prototypes: mean of the unnormalised prompt embeddings (anomalib / WinCLIP-pytorch);
      classic CLIP ensembling L2-normalises each prompt embedding before averaging.
    * Few-shot patch memory uses the final-layer tokens after ``ln_post`` (anomalib's choice;
      the paper does not name the layer).
    * Harmonic means clamp scores at 1e-12 before the reciprocal (a zero score gives 0, not NaN).
    * Prompt templates: the duplicated template of the public list is fixed (22 distinct
      templates, see ``prompts/default.yaml``); class names go through aliases
      (``metal_nut`` -> "metal nut").
    * Maps are blurred with sigma 4 (as fsiad's other methods); anomalib uses no blur.
    * Image input: square bicubic resize to 240 (anomalib's protocol; the paper resizes the
      shorter side to 240).

Options (``MethodConfig.options``): ``scales`` (2, 3), ``temperature`` 0.07, ``multi_crop`` True,
``crop_ratio`` 0.75, ``sigma`` 4.0, ``chunk_tokens`` (window-encoding memory bound).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from fsiad.fewshot.encoders.clip import CLIPEncoder
from fsiad.fewshot.encoders.registry import encoder_from_config
from fsiad.fewshot.methods.base import AnomalyMethod, Images, MethodConfig, iter_batches, register_method
from fsiad.fewshot.methods.options import Option, defaults
from fsiad.fewshot.ops.harmonic import harmonic_mean, harmonic_window_aggregate, window_incidence
from fsiad.fewshot.ops.knn import knn_search
from fsiad.fewshot.ops.smoothing import upsample_blur
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult
from fsiad.prompts.loader import ClassPrompts, load_prompts

DEFAULT_ENCODER = "clip_vitb16plus_240"
OPTIONS = (
    Option("scales", "ints", (2, 3), "window sides k (k x k patches) encoded by masked-token re-encoding", ge=1),
    Option("temperature", "float", 0.07, "softmax temperature of the text class scores", gt=0),
    Option("multi_crop", "bool", True, "image score averaged over the full image and five crops"),
    Option("crop_ratio", "float", 0.75, "side of the five crops relative to the image", gt=0, le=1),
    Option("sigma", "float", 4.0, "Gaussian blur of the map in pixels", ge=0),
    Option("chunk_tokens", "int", None, "tokens per window-encoding chunk (memory bound; none = encoder's)",
           ge=1, nullable=True),
)
DEFAULTS: dict[str, Any] = defaults(OPTIONS)


def make_windows(grid: tuple[int, int], k: int) -> torch.Tensor:
    """All k x k windows at stride 1 on an ``h x w`` grid: ``LongTensor[(h-k+1)(w-k+1), k*k]``.

    Rows are windows in row-major order of their top-left patch; entries are row-major patch
    indices (one ``unfold`` of the index grid, no Python loop).
    """
    h, w = grid
    if not 1 <= k <= min(h, w):
        raise ValueError(f"window scale {k} must be in [1, {min(h, w)}] for a {h}x{w} patch grid")
    idx = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    return F.unfold(idx, kernel_size=k, stride=1)[0].T.round().long()


def text_prototypes(encoder: CLIPEncoder, prompts: ClassPrompts) -> torch.Tensor:
    """``[2, D]`` L2-normalised [normal, anomalous] prototypes: the mean of each class's
    unnormalised text embeddings (cached by the encoder), then normalised."""
    protos = [encoder.text_embedding(p).mean(0) for p in (prompts.normal, prompts.anomalous)]
    return F.normalize(torch.stack(protos), dim=-1)


def five_crops(images: torch.Tensor, ratio: float) -> torch.Tensor:
    """Four corner crops and the centre crop of side ``round(ratio * S)``, resized back to S.

    Args:
        images: ``[N, 3, S, S]``.

    Returns:
        ``[5, N, 3, S, S]`` (order: top-left, top-right, bottom-left, bottom-right, centre).
    """
    s = images.shape[-1]
    c = max(1, round(ratio * s))
    o, m = s - c, (s - c) // 2
    crops = torch.stack([images[..., y : y + c, x : x + c] for y, x in ((0, 0), (0, o), (o, 0), (o, o), (m, m))])
    flat = F.interpolate(crops.flatten(0, 1), size=(s, s), mode="bicubic", align_corners=False)
    return flat.clamp_(0.0, 1.0).reshape(5, *images.shape)


@register_method("winclip")
class WinCLIP(AnomalyMethod):
    """WinCLIP / WinCLIP+ on an open_clip ViT (see the module docstring).

    Args:
        config: ``encoder`` (registry name or ``clip:ARCH/TAG``; default
            ``clip_vitb16plus_240``), ``weights``, ``precision``, ``device``, ``image_size``,
            ``class_name``, ``prompts`` (YAML file), ``options`` (see ``DEFAULTS``).
        encoder: an already built ``CLIPEncoder`` (tests, sharing one model between methods).

    Raises:
        WeightsNotFoundError: at construction, when the encoder's weights are unavailable.
        PromptError: at construction, when the prompt file is invalid.
    """

    regime = "zero-shot"
    options = OPTIONS

    def __init__(self, config: MethodConfig | None = None, encoder: CLIPEncoder | None = None) -> None:
        super().__init__(config)
        self.opts = self.resolve_options()
        self.prompt_set = load_prompts(self.config.prompts)
        self.encoder = encoder if encoder is not None else self._make_encoder()
        if not isinstance(self.encoder, CLIPEncoder):
            raise ValueError(f"winclip needs a CLIP encoder, got {type(self.encoder).__name__}")
        if self.opts["chunk_tokens"]:
            self.encoder.chunk_tokens = int(self.opts["chunk_tokens"])
        self.scales = tuple(int(k) for k in self.opts["scales"])
        self.windows = [make_windows(self.encoder.grid, k) for k in self.scales]
        self.incidence = [window_incidence(w, self.encoder.num_patches) for w in self.windows]
        self.text_features: torch.Tensor | None = None
        self.memory_patches: torch.Tensor | None = None
        self.memory_windows: list[torch.Tensor] = []

    def _make_encoder(self) -> CLIPEncoder:
        return encoder_from_config(self.config, DEFAULT_ENCODER)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.encoder.preprocess.size, interpolation="bicubic")

    @property
    def shots(self) -> int:
        n = 0 if self.memory_patches is None else self.memory_patches.shape[0]
        return n // self.encoder.num_patches

    # -- text -----------------------------------------------------------------------------
    def class_prompts(self) -> ClassPrompts:
        """Expanded prompts for ``config.class_name`` (aliases and overrides applied)."""
        return self.prompt_set.expand(self.config.class_name)

    def _compute_text_features(self) -> torch.Tensor:
        return text_prototypes(self.encoder, self.class_prompts())

    def _class_scores(self, emb: torch.Tensor) -> torch.Tensor:
        """Anomalous probability ``[...]`` of embeddings ``[..., D]``."""
        t = self.text_features.to(emb.device)
        logits = F.normalize(emb.float(), dim=-1) @ t.T / float(self.opts["temperature"])
        return logits.softmax(-1)[..., 1]

    # -- fit ------------------------------------------------------------------------------
    def _fit(self, images: Images) -> None:
        self.text_features = self._compute_text_features()
        patches, wins = [], [[] for _ in self.scales]
        for batch in iter_batches(images, self.config.batch_size):
            if batch.shape[0] == 0:
                continue
            _, p, *ws = self._encode(batch, crops=False)
            patches.append(F.normalize(p.reshape(-1, p.shape[-1]), dim=-1))
            for acc, w in zip(wins, ws, strict=True):
                acc.append(F.normalize(w.reshape(-1, w.shape[-1]), dim=-1))
        self.memory_patches = torch.cat(patches) if patches else None
        self.memory_windows = [torch.cat(a) for a in wins] if patches else []
        self.regime = "few-shot" if patches else "zero-shot"

    # -- predict --------------------------------------------------------------------------
    def _encode(self, images: torch.Tensor, crops: bool) -> list[torch.Tensor]:
        """``[image [N, D], patches [N, P, C], window [N, W_s, D] per scale, (crops [N, 5, D])]``.

        Memoised per image by the encoder's feature cache when enabled (evaluation harness,
        threshold calibration), so that test images are encoded once across shots and seeds.
        """
        with_crops = crops and bool(self.opts["multi_crop"])
        ratio = float(self.opts["crop_ratio"])

        def compute(x: torch.Tensor) -> list[torch.Tensor]:
            img, patches, wins = self.encoder.encode_all(x, self.windows)
            out = [img, patches, *wins]
            if with_crops:
                views = five_crops(x, ratio).flatten(0, 1)
                out.append(self.encoder.image_embedding(views).reshape(5, x.shape[0], -1).transpose(0, 1))
            return out

        tag = ("winclip", self.scales, ratio if with_crops else None)
        return self.encoder.cached(tag, images, compute)

    def _zero_shot(self, img: torch.Tensor, wins: list[torch.Tensor], crop_emb: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        n, p = img.shape[0], self.encoder.num_patches
        s_img = self._class_scores(img)
        maps = [s_img[:, None].expand(n, p)]
        maps += [harmonic_window_aggregate(self._class_scores(w), win, p, incidence=inc)
                 for w, win, inc in zip(wins, self.windows, self.incidence, strict=True)]
        zs_map = harmonic_mean(torch.stack(maps), 0)
        score = s_img
        if crop_emb is not None:
            score = torch.cat([s_img[:, None], self._class_scores(crop_emb)], 1).mean(1)
        return score, zs_map

    def _few_shot_map(self, patches: torch.Tensor, wins: list[torch.Tensor]) -> torch.Tensor:
        n, p = patches.shape[0], self.encoder.num_patches

        def assoc(q: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
            dist = knn_search(q.reshape(-1, q.shape[-1]), mem.to(q.device), k=1, metric="cosine")[0]
            return (dist[:, 0] / 2).reshape(q.shape[:-1])

        maps = [assoc(patches, self.memory_patches)]
        maps += [harmonic_window_aggregate(assoc(w, mem), win, p, incidence=inc)
                 for w, mem, win, inc in zip(wins, self.memory_windows, self.windows, self.incidence, strict=True)]
        return torch.stack(maps).mean(0).reshape(n, p)

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        return self.score_features(self._encode(images, crops=True))

    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """What ``predict`` encodes per batch ``[N, 3, S, S]`` (text-independent; see ``_encode``)."""
        return self._encode(images, crops=True)

    def score_features(self, feats: list[torch.Tensor]) -> AnomalyResult:
        """Score features from ``image_features`` with the current ``text_features`` (and memory).

        ``predict`` is ``score_features(image_features(batch))`` per batch; prompt comparison
        (``fsiad.fewshot.methods.winclip_prompts``) encodes once and swaps ``text_features``.
        """
        if self.text_features is None:
            raise RuntimeError("winclip: text features missing; call fit() (zero-shot: fit() with no images)")
        img, patches, wins = feats[0], feats[1], feats[2 : 2 + len(self.scales)]
        crop_emb = feats[2 + len(self.scales)] if len(feats) > 2 + len(self.scales) else None
        score, grid_map = self._zero_shot(img, wins, crop_emb)
        if self.memory_patches is not None:
            fs_map = self._few_shot_map(patches, wins)
            grid_map = (grid_map + fs_map) / 2
            score = (score + fs_map.amax(1)) / 2
        h, w = self.encoder.grid
        maps = upsample_blur(grid_map.reshape(-1, h, w), self.preprocess.size, float(self.opts["sigma"]))
        return AnomalyResult(score.float().cpu(), maps.cpu())

    # -- metadata and persistence ---------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        cp = self.class_prompts()
        return {
            **super().describe(),
            "regime": self.regime,
            "shots": self.shots,
            "encoder": self.encoder.describe(),
            "class_name": self.config.class_name,
            "prompt_class_name": cp.class_name,
            "prompts": {"file": self.prompt_set.source, "normal": len(cp.normal), "anomalous": len(cp.anomalous)},
            "options": {**self.opts, "scales": list(self.scales)},
        }

    def get_state(self) -> dict[str, torch.Tensor]:
        if self.text_features is None:
            return {}
        state = {"text_features": self.text_features.cpu()}
        if self.memory_patches is not None:
            state["memory_patches"] = self.memory_patches.cpu()
            for k, mem in zip(self.scales, self.memory_windows, strict=True):
                state[f"memory_windows_{k}"] = mem.cpu()
        return state

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        if "text_features" not in state:
            raise ValueError("winclip: saved state has no text_features")
        tf = state["text_features"]
        if tf.shape != (2, self.encoder.embed_dim):
            raise ValueError(f"winclip: saved text_features {tuple(tf.shape)} do not match encoder "
                             f"embedding size {self.encoder.embed_dim}")
        self.text_features = tf.float()
        if "memory_patches" in state:
            missing = [k for k in self.scales if f"memory_windows_{k}" not in state]
            if missing:
                raise ValueError(f"winclip: saved state lacks window memories for scales {missing}")
            self.memory_patches = state["memory_patches"].float()
            self.memory_windows = [state[f"memory_windows_{k}"].float() for k in self.scales]
            self.regime = "few-shot"
        else:
            self.memory_patches, self.memory_windows, self.regime = None, [], "zero-shot"
