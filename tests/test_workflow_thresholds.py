"""Threshold rules and leave-one-out calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fsiad.fewshot.data.base import Sample
from fsiad.fewshot.methods import MethodConfig, create_method
from fsiad.fewshot.methods.knn import augment_shots
from fsiad.fewshot.workflow.runner import decision, fit_references
from fsiad.fewshot.workflow.thresholds import N_VIEWS, ThresholdRule, calibrate_loo, loo_unavailable_reason

from tests.workflow_helpers import loo_scores_numpy, register_test_methods, write_images


def test_rule_parse_and_apply():
    s = [0.2, 0.4, 0.9, 0.5]
    assert ThresholdRule.parse("max").apply(s) == 0.9
    assert str(ThresholdRule()) == "tail" and ThresholdRule.parse("TAIL").kind == "tail"
    r = ThresholdRule.parse(" Mean+2.5STD ")
    assert str(r) == "mean+2.5std"
    assert r.apply(s) == pytest.approx(np.mean(s) + 2.5 * np.std(s))
    assert ThresholdRule.parse("mean+0std").apply(s) == pytest.approx(0.5)
    for bad in ("median", "mean+std", "mean-3std", "", "tails"):
        with pytest.raises(ValueError, match="unknown threshold rule"):
            ThresholdRule.parse(bad)
    with pytest.raises(ValueError):
        ThresholdRule().apply([])


def test_decision_at_threshold():
    assert decision(0.5, 0.5) == "anomalous" and decision(0.49, 0.5) == "normal" and decision(9.0, None) is None


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> list[Sample]:
    register_test_methods()
    paths = write_images(tmp_path_factory.mktemp("refs"), 5, False, seed=7)
    return [Sample(p, 0) for p in paths]


@pytest.mark.parametrize("rule", ["max", "mean+3std"])
def test_loo_scores_match_independent_computation(refs, rule):
    m = create_method("wf_pixdiff", MethodConfig())
    cal = calibrate_loo(m, refs, ThresholdRule.parse(rule))
    expected = loo_scores_numpy([r.path for r in refs])
    assert cal.source == "loo" and cal.rule == rule
    np.testing.assert_allclose(cal.loo_scores, expected, rtol=1e-5, atol=1e-6)
    want = max(expected) if rule == "max" else np.mean(expected) + 3 * np.std(expected)
    assert cal.threshold == pytest.approx(want, rel=1e-5)
    assert "leave-one-out" in cal.description and rule in cal.description


def test_fit_references_refits_on_all_refs(refs):
    m = create_method("wf_pixdiff", MethodConfig())
    cal, _ = fit_references(m, refs, seed=0)
    full = m.prepare(refs).mean(0)  # after calibration the method holds the K-reference model
    assert np.allclose(m.mean.numpy(), full.numpy())
    assert cal.threshold is not None
    cal_user, _ = fit_references(m, refs, threshold=0.25)
    assert cal_user.source == "user" and cal_user.threshold == 0.25 and cal_user.loo_scores == []


def test_loo_unavailable_cases(refs):
    few = create_method("wf_pixdiff", MethodConfig())
    zero = create_method("wf_pixdiff0", MethodConfig())
    assert "at least 2" in loo_unavailable_reason(few, 1)
    assert loo_unavailable_reason(few, 2) is None
    assert loo_unavailable_reason(zero, 1) is None and "at least 1" in loo_unavailable_reason(zero, 0)
    cal = calibrate_loo(few, refs[:1], ThresholdRule())
    assert cal.threshold is None and cal.source == "none" and "scores only" in cal.description
    cal0 = calibrate_loo(zero, refs[:1], ThresholdRule())  # one reference: held out -> zero-shot model
    np.testing.assert_allclose(cal0.loo_scores, [float(zero.fit(None).predict(zero.prepare(refs[:1])).image_scores[0])])


def test_references_encoded_once_and_cache_dropped(refs):
    """LOO + final fit encode each reference once (feature cache), and the cache is gone afterwards."""
    # a fixed knn configuration: preset=auto also encodes synthetic defects of the references
    m = create_method("knn", MethodConfig(allow_random=True, image_size=56, batch_size=4, options={"preset": "mid"}))
    seen = []
    inner = m.encoder._patch_features

    def counting(images, layers):
        seen.append(images.shape[0])
        return inner(images, layers)

    m.encoder._patch_features = counting
    views = augment_shots(torch.zeros(1, 3, 2, 2), m.opts["augment"]).shape[0]  # flips: 4 per shot
    cal, _ = fit_references(m, refs[:3], seed=0)
    # memory: each reference's flips once; held out: the original is cached, its N_VIEWS views are new
    assert sum(seen) == 3 * views + 3 * N_VIEWS and m.encoder._cache is None
    plain = calibrate_loo(m, refs[:3], ThresholdRule())  # no cache: every LOO fit re-encodes
    assert sum(seen) == 3 * views + 3 * N_VIEWS + 3 * 2 * views + 3 * (1 + N_VIEWS)
    np.testing.assert_allclose(cal.loo_scores, plain.loo_scores, rtol=1e-5)
