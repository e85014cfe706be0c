"""WinCLIP method: windows, harmonic op, prompts steering, persistence, weights errors."""

from __future__ import annotations

import time

import pytest
import torch
from fsiad.fewshot.encoders import WeightsNotFoundError
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.methods import AnomalyMethod, MethodConfig, create_method
from fsiad.fewshot.methods.winclip import WinCLIP, five_crops, make_windows
from fsiad.fewshot.ops.harmonic import harmonic_mean, harmonic_window_aggregate, window_incidence
from fsiad.prompts.loader import PromptError

from tests.clip_helpers import (  # noqa: F401 - fixtures
    fsiad_home_fixture,
    images,
    register_tiny_arch,
    tiny_fixture,
)


def test_make_windows_geometry():
    w2, w3 = make_windows((15, 15), 2), make_windows((15, 15), 3)
    assert w2.shape == (196, 4) and w3.shape == (169, 9)
    assert w2[0].tolist() == [0, 1, 15, 16] and w2[14].tolist() == [15, 16, 30, 31]
    assert w3[-1].tolist() == [192, 193, 194, 207, 208, 209, 222, 223, 224]
    with pytest.raises(ValueError, match="window scale"):
        make_windows((15, 15), 16)


def test_harmonic_window_aggregate_matches_loop():
    windows = make_windows((5, 4), 2)
    scores = torch.rand(3, windows.shape[0]) + 0.05
    got = harmonic_window_aggregate(scores, windows, 20)
    for n in range(3):
        for p in range(20):
            cover = [scores[n, i] for i in range(windows.shape[0]) if p in windows[i].tolist()]
            assert abs(float(got[n, p]) - len(cover) / sum(1 / float(s) for s in cover)) < 1e-5
    assert torch.allclose(harmonic_mean(torch.tensor([[1.0], [4.0]]), 0), torch.tensor([1.6]))
    zero = harmonic_window_aggregate(torch.zeros(1, windows.shape[0]), windows, 20)
    assert torch.isfinite(zero).all() and float(zero.max()) < 1e-9  # zero score -> zero, not NaN
    with pytest.raises(ValueError, match="covered by no window"):
        window_incidence(torch.tensor([[0, 1]]), 3)


def test_five_crops_corners():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).expand(1, 3, 4, 4) / 16
    crops = five_crops(x, 0.5)
    assert crops.shape == (5, 1, 3, 4, 4)
    assert float(crops[0, 0, 0, 0, 0]) == pytest.approx(0.0, abs=0.02)  # top-left corner crop


def test_custom_prompt_file_changes_scores(tiny, tmp_path):
    x = images(2, seed=3)
    base = WinCLIP(MethodConfig(class_name="bottle"), encoder=tiny).fit().predict(x)
    custom = tmp_path / "p.yaml"
    custom.write_text(
        "normal_states: ['{}', 'pristine {}']\n"
        "anomalous_states: ['{} with a crack', 'broken {}']\n"
        "templates: ['a photo of the {}.', 'an image of a {}.']\n"
    )
    m = WinCLIP(MethodConfig(class_name="bottle", prompts=str(custom)), encoder=tiny).fit()
    other = m.predict(x)
    assert not torch.allclose(base.image_scores, other.image_scores, atol=1e-4)
    assert not torch.allclose(base.anomaly_maps, other.anomaly_maps, atol=1e-4)
    d = m.describe()
    assert d["prompts"] == {"file": str(custom), "normal": 4, "anomalous": 4}
    assert d["regime"] == "zero-shot" and d["shots"] == 0


def test_invalid_prompt_file_fails_at_construction(tiny, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("normal_states: ['ok {}']\nanomalous_states: []\ntemplates: ['no placeholder']\n")
    with pytest.raises(PromptError, match=r"bad.yaml:2: .*empty list"):
        WinCLIP(MethodConfig(prompts=str(bad)), encoder=tiny)
    with pytest.raises(OptionError, match="unknown option"):
        WinCLIP(MethodConfig(options={"scale": 2}), encoder=tiny)


def test_save_load_round_trip_few_shot(fsiad_home, tmp_path):
    arch = register_tiny_arch(tmp_path)
    cfg = MethodConfig(encoder=f"clip:{arch}", allow_random=True, class_name="screw", batch_size=2)
    m = create_method("winclip", cfg).fit(images(3, seed=4))
    assert m.regime == "few-shot" and m.shots == 3
    x = images(3, seed=5)
    before = m.predict(x)
    state = m.get_state()
    assert set(state) == {"text_features", "memory_patches", "memory_windows_2", "memory_windows_3"}
    assert state["memory_windows_2"].shape == (3 * 196, 32)
    m.save(tmp_path / "model")
    loaded = AnomalyMethod.load(tmp_path / "model")
    after = loaded.predict(x)
    assert loaded.describe()["regime"] == "few-shot"
    torch.testing.assert_close(after.image_scores, before.image_scores)
    torch.testing.assert_close(after.anomaly_maps, before.anomaly_maps)


def test_query_equal_to_a_shot_has_zero_few_shot_term(tiny):
    refs = images(2, seed=6)
    m = WinCLIP(MethodConfig(options={"multi_crop": False}), encoder=tiny).fit(refs)
    own = m.predict(refs)  # a query equal to a shot has zero association distance
    zs = WinCLIP(MethodConfig(options={"multi_crop": False}), encoder=tiny).fit().predict(refs)
    torch.testing.assert_close(own.image_scores, zs.image_scores / 2, atol=1e-5, rtol=0)


def test_unavailable_weights_raise_resolver_error_at_once(fsiad_home):
    t0 = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as err:
        create_method("winclip", MethodConfig(class_name="bottle"))
    assert time.monotonic() - t0 < 5
    assert "clip_vitb16plus_240" in str(err.value) and "weights" in str(err.value)



def test_feature_cache_reuses_test_images_across_fits(tiny, monkeypatch):
    x, refs = images(2, seed=11), images(2, seed=12)
    m = WinCLIP(MethodConfig(class_name="bottle"), encoder=tiny)
    plain_zs, plain_fs = m.fit().predict(x), m.fit(refs).predict(x)
    tiny.enable_cache(1 << 28)
    first = m.fit().predict(x)
    m.fit(refs)

    def no_encoding(*_args, **_kw):
        raise AssertionError("test images should come from the feature cache")

    monkeypatch.setattr(tiny, "encode_all", no_encoding)
    second = m.predict(x)  # different regime, same cached test features
    tiny.disable_cache()
    torch.testing.assert_close(first.image_scores, plain_zs.image_scores)
    torch.testing.assert_close(first.anomaly_maps, plain_zs.anomaly_maps)
    torch.testing.assert_close(second.image_scores, plain_fs.image_scores)
    torch.testing.assert_close(second.anomaly_maps, plain_fs.anomaly_maps)
