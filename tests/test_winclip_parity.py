"""WinCLIP / WinCLIP+ vs a plain loop-based implementation of the paper's equations.

The reference below uses open_clip's modules directly, one window / one patch at a time:
    class score     s(f) = softmax(cos(f, [t_n, t_a]) / 0.07)[a]
    window map      M_k[p] = |W_p| / sum_{w in W_p} 1 / s(f_w)     (windows covering p)
    zero-shot map   M_0[p] = 3 / (1 / s(f_img) + 1 / M_2[p] + 1 / M_3[p])
    image score     mean of s over the full image and its five crops (multi-crop)
    association     A(q) = min_{m in memory} (1 - cos(q, m)) / 2
    few-shot map    M_fs = (A_patch + H(A_win2) + H(A_win3)) / 3
    WinCLIP+        map = (M_0 + M_fs) / 2, score = (score_0 + max M_fs) / 2
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fsiad.fewshot.methods import MethodConfig
from fsiad.fewshot.methods.winclip import WinCLIP
from fsiad.fewshot.ops.smoothing import upsample_blur
from fsiad.prompts.loader import load_prompts

from tests.clip_helpers import fsiad_home_fixture, images, tiny_fixture  # noqa: F401 - fixtures

GRID = 15


def _tokens(v, enc, image):
    x = v.conv1((image[None] - enc.mean) / enc.std).flatten(2).transpose(1, 2)
    return torch.cat([v.class_embedding.view(1, 1, -1), x], 1) + v.positional_embedding


def _encode(v, seq):
    y = v.ln_post(v.transformer(v.ln_pre(seq)))
    return y[0, 0] @ v.proj, y[0, 1:]


def _text(enc, class_name):
    ps = load_prompts()
    name = ps.class_name(class_name)
    protos = []
    for states in (ps.normal_states, ps.anomalous_states):
        texts = [t.replace("{}", s.replace("{}", name)) for s in states for t in ps.templates]
        protos.append(enc.model.encode_text(enc.tokenizer(texts)).mean(0))
    return F.normalize(torch.stack(protos), dim=-1)


def _score(f, text):
    return torch.softmax(F.normalize(f, dim=-1) @ text.T / 0.07, -1)[1]


def _windows(k):
    out = []
    for i in range(GRID - k + 1):
        for j in range(GRID - k + 1):
            out.append([(i + a) * GRID + (j + b) for a in range(k) for b in range(k)])
    return out


def _features(enc, image):
    v = enc.model.visual
    tok = _tokens(v, enc, image)
    img, patches = _encode(v, tok)
    wins = {}
    for k in (2, 3):
        wins[k] = [_encode(v, tok[:, [0] + [p + 1 for p in w]])[0] for w in _windows(k)]
    return img, patches, wins


_COVERING = {k: [[i for i, w in enumerate(_windows(k)) if p in w] for p in range(GRID * GRID)] for k in (2, 3)}


def _harmonic_onto_patches(scores, k):
    out = torch.zeros(GRID * GRID)
    for p in range(GRID * GRID):
        covering = [float(scores[i]) for i in _COVERING[k][p]]
        out[p] = len(covering) / sum(1.0 / s for s in covering)
    return out


def _crops(image, ratio=0.75):
    s = image.shape[-1]
    c = round(ratio * s)
    o, m = s - c, (s - c) // 2
    out = []
    for y, x in ((0, 0), (0, o), (o, 0), (o, o), (m, m)):
        crop = image[None, :, y : y + c, x : x + c]
        out.append(F.interpolate(crop, size=(s, s), mode="bicubic", align_corners=False).clamp(0, 1)[0])
    return out


def _assoc(q, memory):
    """min over the memory entries of (1 - cos) / 2 (the memory is a stacked [M, C] tensor)."""
    return float(((1 - F.cosine_similarity(q[None], memory, dim=1)) / 2).min())


@torch.inference_mode()
def _reference(enc, queries, refs, class_name):
    text = _text(enc, class_name)
    mem_p, mem_w = [], {2: [], 3: []}
    for r in refs:
        _, patches, wins = _features(enc, r)
        mem_p += list(patches)
        for k in (2, 3):
            mem_w[k] += wins[k]
    if len(refs):
        mem_p, mem_w = torch.stack(mem_p), {k: torch.stack(v) for k, v in mem_w.items()}
    scores, maps = [], []
    for image in queries:
        img, patches, wins = _features(enc, image)
        s_img = float(_score(img, text))
        m = {k: _harmonic_onto_patches([_score(f, text) for f in wins[k]], k) for k in (2, 3)}
        zs_map = torch.tensor([3.0 / (1 / s_img + 1 / float(m[2][p]) + 1 / float(m[3][p])) for p in range(GRID ** 2)])
        crop_scores = [float(_score(enc.model.encode_image((c[None] - enc.mean) / enc.std)[0], text))
                       for c in _crops(image)]
        score = (s_img + sum(crop_scores)) / 6
        if len(refs):
            a_patch = torch.tensor([_assoc(patches[p], mem_p) for p in range(GRID ** 2)])
            a_win = {k: _harmonic_onto_patches([_assoc(f, mem_w[k]) for f in wins[k]], k) for k in (2, 3)}
            fs_map = (a_patch + a_win[2] + a_win[3]) / 3
            zs_map = (zs_map + fs_map) / 2
            score = (score + float(fs_map.max())) / 2
        scores.append(score)
        maps.append(zs_map.reshape(GRID, GRID))
    return torch.tensor(scores), upsample_blur(torch.stack(maps), 240, 4.0)


@pytest.mark.parametrize("shots", [0, 4])
def test_winclip_matches_loop_reference(tiny, shots):
    queries, refs = images(2, seed=10), images(shots, seed=20)
    method = WinCLIP(MethodConfig(class_name="metal_nut"), encoder=tiny).fit(refs)
    got = method.predict(queries)
    ref_scores, ref_maps = _reference(tiny, queries, refs, "metal_nut")
    assert method.describe()["regime"] == ("few-shot" if shots else "zero-shot")
    torch.testing.assert_close(got.image_scores, ref_scores.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(got.anomaly_maps, ref_maps, atol=1e-4, rtol=0)
    # the maps carry information (not constant), so agreement is not trivial
    assert float(ref_maps.std()) > 1e-4
