"""MAEDAY zero-shot: seeded masks, masked-only error averaging, foreign-patch localisation, weights."""

import pytest
import torch
from fsiad.fewshot.encoders import WeightsNotFoundError, create_encoder, encoder_status, get_entry
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.methods import AnomalyMethod, MethodConfig, create_method
from fsiad.fewshot.methods.maeday import mask_noise, masked_error_maps

# a tiny ViTMAE (random init): 64 px, patch 8 -> 8x8 = 64 patches, 16 kept per mask
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
            decoder_intermediate_size=64, image_size=64, patch_size=8)


def _tiny(**opts) -> AnomalyMethod:
    return create_method("maeday", MethodConfig(allow_random=True, batch_size=4, options={"arch": TINY, **opts}))


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """ViTMAE layout: ``[B, C, H, W]`` -> ``[B, L, (py, px, c)]``."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)


def _masked(noise: torch.Tensor, keep: float) -> torch.Tensor:
    """True = hidden: all but the ``int(L * keep)`` smallest-noise patches."""
    n_keep = int(noise.shape[1] * keep)
    hidden = torch.ones_like(noise, dtype=torch.bool)
    hidden.scatter_(1, noise.argsort(1)[:, :n_keep], False)
    return hidden


class CopyVisibleZeroHidden:
    """Test double: visible patches reproduced exactly, hidden ones predicted as 0 (target = image)."""

    def __call__(self, images, noise, keep):
        target = _patchify(images, 8)
        hidden = _masked(noise, keep)
        return target * (~hidden)[..., None], target, hidden


class MeanInpainter:
    """Test double: a hidden patch is predicted as the mean of the visible patches (an 'ideal'
    normal-texture inpainter); visible patches are copied."""

    def __call__(self, images, noise, keep):
        target = _patchify(images, 8)
        hidden = _masked(noise, keep)
        vis = (~hidden).float()[..., None]
        fill = (target * vis).sum(1, keepdim=True) / vis.sum(1, keepdim=True)
        return torch.where(hidden[..., None], fill, target), target, hidden


def test_real_masks_keep_a_quarter_are_seeded_distinct_and_cover_every_patch():
    m = _tiny()
    noise = m.noise(64)
    assert noise.shape == (32, 64) and torch.equal(noise, _tiny().noise(64))
    assert not torch.equal(noise, _tiny(seed=1).noise(64))
    x = torch.rand(32, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    pred, target, hidden = m.encoder.reconstruct(x, noise, 0.25)
    assert pred.shape == target.shape == (32, 64, 8 * 8 * 3)
    assert (~hidden).sum(1).tolist() == [16] * 32  # exactly 25 % kept
    assert torch.equal(hidden, _masked(noise, 0.25))  # ViTMAE keeps the smallest-noise patches
    assert len({tuple(row.tolist()) for row in hidden}) == 32  # the 32 masks differ
    assert bool(hidden.any(0).all())  # every patch (hence pixel) is hidden by some mask
    # the decoder target is the ImageNet-normalised image (norm_pix_loss off by default)
    assert torch.allclose(target, _patchify(m.encoder.normalize(x), 8), atol=1e-6)


def test_error_is_averaged_only_over_masks_that_hid_the_pixel():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = mask_noise(32, 16, seed=0)
    maps = masked_error_maps(x, CopyVisibleZeroHidden(), noise, 0.25, patch=8, chunk=7)
    # hidden error is x^2 at every pixel; counting visible (zero-error) copies would shrink it by ~25 %
    assert maps.shape == (2, 32, 32)
    assert torch.allclose(maps, x.square().mean(1), atol=1e-6)
    # a single mask: the 4 kept patches were never hidden -> fall back to their visible error (0 here)
    one = masked_error_maps(x, CopyVisibleZeroHidden(), noise[:1], 0.25, patch=8)
    kept = ~_masked(noise[:1], 0.25)[0].reshape(4, 4)
    kept_px = kept.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.all(one[:, kept_px] == 0) and torch.allclose(one[:, ~kept_px], x.square().mean(1)[:, ~kept_px])


def test_pasted_foreign_patch_gets_the_highest_error_and_score():
    m = _tiny(sigma=0.0)
    g = torch.Generator().manual_seed(3)
    normal = 0.5 + 0.02 * torch.randn(1, 3, 64, 64, generator=g)
    defect = normal.clone()
    defect[:, :, 24:40, 16:32] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)  # foreign red square
    m.encoder.reconstruct = MeanInpainter()  # instance attribute replaces the real decoder
    r = m.fit().predict(torch.cat([normal, defect]))
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[24:40, 16:32] = True
    d = r.anomaly_maps[1]
    assert d[inside].min() > 4 * d[~inside].max()
    assert r.image_scores[1] > 10 * r.image_scores[0]


def test_tiny_model_maps_are_deterministic_batch_independent_and_save_load(tmp_path):
    m = _tiny(chunk=10)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    r = m.fit().predict(x)
    assert r.image_scores.shape == (3,) and r.anomaly_maps.shape == (3, 64, 64)
    assert torch.isfinite(r.anomaly_maps).all() and (r.anomaly_maps >= 0).all()
    single = m.predict(x[1:2])
    assert torch.allclose(single.anomaly_maps[0], r.anomaly_maps[1], atol=1e-5)
    m.save(tmp_path / "m")
    again = AnomalyMethod.load(tmp_path / "m").predict(x)
    assert torch.allclose(again.anomaly_maps, r.anomaly_maps, atol=1e-6)
    assert m.describe()["error_space"] == "ImageNet-normalised pixels"


def test_fit_with_references_and_bad_options_fail_clearly():
    m = _tiny()
    with pytest.raises(OptionError, match="zero-shot only"):
        m.fit(torch.rand(1, 3, 64, 64))
    with pytest.raises(OptionError, match="unknown option"):
        _tiny(n_mask=3)
    with pytest.raises(ValueError, match="allow_random"):
        create_method("maeday", MethodConfig(options={"arch": TINY}))


def test_patch_features_match_the_hf_encoder_without_masking():
    enc = _tiny().encoder
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    (f,) = enc.patch_features(x)
    enc.config.mask_ratio = 0.0
    with torch.inference_mode():
        ref = enc.model.vit(enc.normalize(x), noise=torch.arange(64.0).expand(2, 64)).last_hidden_state
    assert f.shape == (2, 8, 8, 32)
    assert torch.allclose(f.reshape(2, 64, 32), ref[:, 1:], atol=1e-5)
    assert enc.image_embedding(x).shape == (2, 32)


def test_missing_pretrained_weights_raise_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FSIAD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status = encoder_status("mae_vitb16_pretrain")
    assert not status["available"] and "facebook/vit-mae-base" in status["howto"]
    assert "mae_vitb16_pretrain" in get_entry("mae_vitb16_pretrain").spec.ways()[1]
    with pytest.raises(WeightsNotFoundError, match="mae_vitb16_pretrain.*vit-mae-base"):
        create_encoder("mae_vitb16_pretrain")
    with pytest.raises(WeightsNotFoundError):
        create_method("maeday", MethodConfig())


def test_hf_snapshot_with_legacy_keys_and_config_json_loads(tmp_path):
    import json

    from fsiad.fewshot.encoders.base import WeightInfo
    from fsiad.fewshot.encoders.mae_pretrain import MAEPretrainEncoder
    from safetensors.torch import save_file

    src = _tiny().encoder
    legacy = {}
    for k, v in src.model.state_dict().items():  # current names -> transformers-4.x names
        k = k.replace("vit.layers.", "vit.encoder.layer.")
        for new, old in (("q_proj", "attention.query"), ("k_proj", "attention.key"), ("v_proj", "attention.value"),
                         ("o_proj", "output.dense"), ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
            k = k.replace(f"attention.{new}" if "proj" in new else new, f"attention.{old}" if "proj" in new else old)
        legacy[k] = v.contiguous()
    assert "vit.encoder.layer.0.attention.attention.query.weight" in legacy
    assert "decoder.decoder_layers.0.attention.output.dense.bias" in legacy
    assert "vit.encoder.layer.1.output.dense.weight" in legacy
    snap = tmp_path / "snapshot"
    snap.mkdir()
    save_file(legacy, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({"model_type": "vit_mae", **TINY, "norm_pix_loss": True}))
    enc = MAEPretrainEncoder(WeightInfo("file", str(snap / "model.safetensors"), "test")).eval()
    assert enc.norm_pix_loss and enc.patch_size == 8 and enc.preprocess.size == 64
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    noise = mask_noise(2, 64, 0)
    pred, target, hidden = enc.reconstruct(x, noise)
    pred0, target0, hidden0 = src.reconstruct(x, noise)
    assert torch.allclose(pred, pred0, atol=1e-6) and torch.equal(hidden, hidden0)
    per_patch = _patchify(enc.normalize(x), 8)
    per_patch = (per_patch - per_patch.mean(-1, keepdim=True)) / (per_patch.var(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(target, per_patch, atol=1e-5)  # norm_pix_loss: per-patch normalised target
