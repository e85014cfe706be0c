"""btf / fpfh / rgb / depth end to end on synthetic MVTec 3D-AD data, persistence, harness CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fsiad.fewshot.data import load_dataset
from fsiad.fewshot.methods import AnomalyMethod, MethodConfig, create_method, method_names
from fsiad.fewshot.metrics import image_metrics
from fsiad.pointcloud.batch import RGBDBatch

from tests.pointcloud_helpers import ENCODER, SIZE, mixed_root, needs_encoder  # noqa: F401


@pytest.fixture(scope="module")
def mixed(mixed_root):  # noqa: F811
    (cat,) = load_dataset("mvtec3d", mixed_root)
    return cat


@pytest.fixture(scope="module")
def batches(mixed):
    """Prepared once (RGB + FPFH); every method of the same size reuses them."""
    m = create_method("fpfh", MethodConfig(image_size=SIZE))
    return m.prepare(mixed.train), m.prepare(mixed.test)


def _cfg(**kw):
    return MethodConfig(image_size=SIZE, encoder=ENCODER, **kw)


def test_registered():
    assert {"btf", "fpfh", "rgb", "depth"} <= set(method_names())


@needs_encoder
def test_btf_beats_single_modalities_on_mixed_defects(mixed, batches):
    train, test = batches
    labels = np.array([s.label for s in mixed.test])
    geo = np.array([s.defect in ("good", "dent", "crack") for s in mixed.test])
    col = np.array([s.defect in ("good", "color") for s in mixed.test])
    auc, family = {}, {}
    for name, opts in (("btf", {}), ("fpfh", {}), ("rgb", {}), ("btf-scores", {"fusion": "scores"})):
        m = create_method(name.split("-")[0], _cfg(options=opts)).fit(train)
        r = m.predict(test)
        assert r.anomaly_maps.shape == (len(mixed.test), SIZE, SIZE) and torch.isfinite(r.anomaly_maps).all()
        s = r.image_scores.numpy()
        auc[name] = image_metrics(s, labels)["image_auroc"]
        family[name] = (image_metrics(s[geo], labels[geo])["image_auroc"], image_metrics(s[col], labels[col])["image_auroc"])
    print("I-AUROC", auc, "geometric/colour", family)
    assert auc["btf"] > auc["fpfh"] + 0.05 and auc["btf"] > auc["rgb"] + 0.05, auc
    assert auc["btf"] >= 0.85, auc
    assert auc["btf-scores"] > auc["fpfh"] + 0.05 and auc["btf-scores"] > auc["rgb"] + 0.05, auc
    assert family["fpfh"][0] >= 0.9 and family["rgb"][1] >= 0.9  # each sees its own family


def test_fpfh_localises_geometric_defects(mixed, batches):
    from fsiad.fewshot.data import read_mask
    from fsiad.fewshot.metrics import pixel_metrics

    train, test = batches
    m = create_method("fpfh", MethodConfig(image_size=SIZE)).fit(train)
    idx = [i for i, s in enumerate(mixed.test) if s.defect in ("good", "dent", "crack")]
    r = m.predict(test[slice(None)])
    masks = m.preprocess.masks([read_mask(mixed.test[i].mask_path) for i in idx])
    px = pixel_metrics(r.anomaly_maps[idx].numpy(), masks.numpy())
    assert px["pixel_auroc"] > 0.9 and px["pixel_aupro"] > 0.7, px


def test_fit_predict_contract(mixed, batches, tmp_path):
    train, test = batches
    m = create_method("fpfh", MethodConfig(image_size=SIZE, batch_size=3))
    with pytest.raises(RuntimeError, match="call fit"):
        m.predict(test)
    with pytest.raises(ValueError, match="at least one normal reference"):
        m.fit(None)
    with pytest.raises(TypeError, match="RGBDBatch"):
        m.fit(torch.zeros(1, 3, SIZE, SIZE))
    m.fit([train[:2], train[2:]])  # an iterable of batches == one batch
    one = create_method("fpfh", MethodConfig(image_size=SIZE)).fit(train)
    torch.testing.assert_close(m.memory, one.memory)
    r1, r2 = m.predict([test[:5], test[5:]]), one.predict(test)
    torch.testing.assert_close(r1.image_scores, r2.image_scores)
    torch.testing.assert_close(r1.anomaly_maps, r2.anomaly_maps)
    # image score = max patch distance, which is at least every blurred map value's neighbourhood max
    assert (r2.image_scores >= r2.anomaly_maps.flatten(1).amax(1) - 1e-5).all()
    m.save(tmp_path / "model")
    loaded = AnomalyMethod.load(tmp_path / "model")
    r3 = loaded.predict(test)
    torch.testing.assert_close(r3.image_scores, r2.image_scores)
    meta = json.loads((tmp_path / "model" / "method.json").read_text())
    assert meta["name"] == "fpfh" and meta["describe"]["fpfh"]["feature_radius"] == 0.25


def test_options_and_coreset(batches):
    train, test = batches
    with pytest.raises(ValueError, match="unknown option"):
        create_method("fpfh", MethodConfig(options={"nope": 1}))
    with pytest.raises(ValueError, match="fusion_norm"):
        create_method("fpfh", MethodConfig(options={"fusion_norm": "l2"}))
    full = create_method("fpfh", MethodConfig(image_size=SIZE)).fit(train)
    cs = create_method("fpfh", MethodConfig(image_size=SIZE, options={"coreset_above": 2, "coreset_ratio": 0.25})).fit(train)
    assert cs.memory.shape[0] == int(np.ceil(0.25 * full.memory.shape[0]))
    # every coreset row is a row of the full bank (same normalisation statistics)
    d = (cs.memory[:, None] - full.memory[None]).abs().amax(-1).min(1).values
    assert float(d.max()) < 1e-4
    assert full.describe()["regime"] == "few-shot" and cs.describe()["regime"] == "full-data"
    raw = create_method("fpfh", MethodConfig(image_size=SIZE, options={"fusion_norm": "none"})).fit(train)
    assert float(raw.stats["scale.fpfh"]) == 1.0 and float(full.stats["scale.fpfh"]) != 1.0


def test_rgb_method_needs_colour(tmp_path, mixed):
    from fsiad.pointcloud.data import rgbd_sample

    m = create_method("rgb", MethodConfig(image_size=SIZE, encoder=ENCODER, allow_random=True))
    with pytest.raises(ValueError, match=r"000\.tiff: method rgb needs an RGB image"):
        m.prepare([rgbd_sample(None, mixed.test[0].extra["xyz"])])


def test_depth_and_btf_random_encoder_smoke(batches, tmp_path):
    train, test = batches
    for name in ("depth", "btf"):
        m = create_method(name, _cfg(allow_random=True, options={"weights": {"fpfh": 2.0}})).fit(train)
        r = m.predict(test[:3])
        assert r.image_scores.shape == (3,) and torch.isfinite(r.anomaly_maps).all()
        d = m.describe()
        assert d["encoder"]["encoder"] == ENCODER and d["encoder"]["weights_source"] == "random"
    assert m.weights == {"rgb": 1.0, "fpfh": 2.0}
    # score-level fusion: one bank per modality, patch score sqrt(d_rgb^2 + d_fpfh^2); round-trips
    s = create_method("btf", _cfg(allow_random=True, options={"fusion": "scores"})).fit(train)
    assert set(s.banks) == {"rgb", "fpfh"} and s.memory is None
    ps = s.patch_scores(test[:2])
    parts = []
    for mod in ("rgb", "fpfh"):
        single = create_method("fpfh" if mod == "fpfh" else "rgb", _cfg(allow_random=True)).fit(train)
        single.stats = {k: v for k, v in s.stats.items() if k.endswith(mod)}  # same normalisation
        single.banks = {"fused": s.banks[mod]}
        parts.append(single.patch_scores(test[:2]))
    torch.testing.assert_close(ps, (parts[0] ** 2 + parts[1] ** 2).sqrt())
    s.save(tmp_path / "s")
    loaded = AnomalyMethod.load(tmp_path / "s")
    torch.testing.assert_close(loaded.predict(test[:2]).image_scores, s.predict(test[:2]).image_scores)


def test_batch_concat_and_slice(batches):
    train, _ = batches
    both = RGBDBatch.concat([train[:1], train[1:]])
    assert len(both) == len(train) and both.sources == train.sources
    torch.testing.assert_close(both.features["fpfh"], train.features["fpfh"])


@needs_encoder
def test_fsiad_eval_on_synthetic(mixed_root, tmp_path):  # noqa: F811
    from fsiad.cli.main import app

    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--method", "btf", "--dataset", "mvtec3d", "--root", str(mixed_root),
                                   "--shots", "2", "--image-size", str(SIZE), "--encoder", ENCODER,
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    row = doc["mean"]["2"]
    for k in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert 0.5 < row[k]["mean"] <= 1.0, (k, row)
    assert doc["meta"]["encoder"] == ENCODER and doc["meta"]["method"] == "btf"


def test_clean_option_blanks_background(mixed, tmp_path, monkeypatch):
    from fsiad.pointcloud.io import valid_mask

    monkeypatch.setenv("FSIAD_HOME", str(tmp_path))
    raw = create_method("fpfh", MethodConfig(image_size=SIZE)).prepare(mixed.train[:1])
    m = create_method("fpfh", MethodConfig(image_size=SIZE, options={"clean": True}))
    b = m.prepare(mixed.train[:1])
    before, after = valid_mask(raw.xyz[0].numpy()), valid_mask(b.xyz[0].numpy())
    assert after.sum() < 0.5 * before.sum() and not (after & ~before).any()
    removed = torch.from_numpy(before & ~after)
    assert b.rgb[0][:, removed].median() < 0.02 < 0.1 < raw.rgb[0][:, removed].median()  # BTF blanks the RGB too
    assert m.describe()["cleaning"]["dbscan_eps"] == 0.006
    assert list((tmp_path / "cache" / "pointcloud").glob("*.npz"))
