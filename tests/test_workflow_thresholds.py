"""Threshold rules and leave-one-out calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fsiad.fewshot.data.base import Sample
from fsiad.fewshot.methods import MethodConfig, create_method
from fsiad.fewshot.methods.knn import augment_shots
from fsiad.fewshot.workflow.runner import decision, fit_references
from fsiad.fewshot.workflow.thresholds import (
    DEFAULT_TARGET_FPR,
    N_VIEWS,
    PRIOR_GROUPS,
    SYNTH_KINDS,
    ThresholdRule,
    bounded_threshold,
    calibrate_loo,
    defect_bound,
    loo_unavailable_reason,
    tail_fit,
)

from tests.workflow_helpers import loo_scores_numpy, register_test_methods, write_images


def test_rule_parse_and_apply():
    s = [0.2, 0.4, 0.9, 0.5]
    assert ThresholdRule.parse("max").apply(s) == 0.9
    assert str(ThresholdRule()) == "tail" and ThresholdRule.parse("TAIL").kind == "tail"
    assert str(ThresholdRule.parse("fpr")) == "fpr" and ThresholdRule.parse("fpr").fitted
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
    # memory: each reference's flips once; held out: the original is cached, its N_VIEWS views and
    # its synthetic defects are new
    first = 3 * views + 3 * N_VIEWS + 3 * len(SYNTH_KINDS)
    assert sum(seen) == first and m.encoder._cache is None
    plain = calibrate_loo(m, refs[:3], ThresholdRule())  # no cache: every fit re-encodes
    assert sum(seen) == first + 3 * 2 * views + 3 * (1 + N_VIEWS + len(SYNTH_KINDS))
    np.testing.assert_allclose(cal.loo_scores, plain.loo_scores, rtol=1e-5)


def _tail_numpy(x: np.ndarray, fpr: float, groups: int) -> float:
    """Independent log-normal tail threshold (numpy + scipy, not the module)."""
    from scipy.stats import norm

    lx = np.log(x)
    mu = np.median(lx)
    sigma = max(1.4826 * np.median(np.abs(lx - mu)), 0.1) * np.sqrt(1 + 1 / groups)
    return float(np.exp(mu + norm.ppf(1 - fpr) * sigma))


def _weakest_kind_median(rows: np.ndarray) -> float:
    """Independent bound: per kind (column) the middle of its sorted scores, lowest kind."""
    meds = []
    for col in np.asarray(rows, dtype=float).T:
        c, n = sorted(col), len(col)
        meds.append(c[n // 2] if n % 2 else 0.5 * (c[n // 2 - 1] + c[n // 2]))
    return min(meds)


@pytest.mark.parametrize("case", ["far", "near", "between", "low", "very far", "one blind kind"])
def test_bounded_threshold_matches_independent_computation(case):
    rng = np.random.default_rng(3)
    normal = np.exp(rng.normal(np.log(2.0), 0.3, 28))
    target = 0.05  # the default; the floor is the fit's point at 2 x the target
    tail, floor = _tail_numpy(normal, target, 4), _tail_numpy(normal, 2 * target, 4)
    mid = np.sqrt(tail * floor)
    # 4 held-out references (rows) x 3 or 4 kinds (columns)
    defects = {"far": np.linspace(4 * tail, 8 * tail, 12), "very far": np.linspace(8 * tail, 12 * tail, 12),
               "near": np.full(12, 2 * mid),
               "between": np.r_[np.full(4, mid), np.linspace(20, 30, 8)],
               "low": np.linspace(0.2 * floor, 2 * tail, 12),
               # one kind scored like the normals, two far above: the blind kind bounds the threshold
               "one blind kind": np.r_[np.linspace(0.6 * tail, 0.9 * tail, 4), np.linspace(20 * tail, 30 * tail, 12)],
               }[case].reshape(-1, 4).T
    got = bounded_threshold(normal, defects, target, n_groups=4)
    d = _weakest_kind_median(defects)
    # half the weakest kind's median, at most 3 x the tail fit, not below the 2 x target point
    want = max(min(d / 2, 3 * tail), floor)
    assert got["bound"] == ("floor" if floor > d / 2 else "capped" if d / 2 > 3 * tail else
                            "raised" if d / 2 > tail else "defects")
    assert got["threshold"] == pytest.approx(want, rel=1e-9) and got["tail"] == pytest.approx(tail, rel=1e-9)
    assert got["defect_bound"] == pytest.approx(d) and got["floor"] == pytest.approx(floor, rel=1e-9)
    assert got["n_defects"] == defects.size and len(got["defect_kinds"]) == defects.shape[1]
    # expected false-alarm rate: the fitted normal law's exceedance of the threshold
    from scipy.stats import norm

    lx = np.log(normal)
    sigma = max(1.4826 * np.median(np.abs(lx - np.median(lx))), 0.1) * np.sqrt(1.25)
    want_fpr = float(norm.sf((np.log(want) - np.median(lx)) / sigma))
    assert got["expected_fpr"] == pytest.approx(want_fpr, rel=1e-6)
    assert floor - 1e-12 <= got["threshold"] and (got["expected_fpr"] < target) == (got["threshold"] > tail)
    assert got["expected_fpr"] <= 2 * target + 1e-12
    assert got["bound"] == {"far": "raised", "very far": "capped", "near": "defects", "between": "floor",
                            "low": "floor", "one blind kind": "floor"}[case]
    if case == "one blind kind":  # the pooled 0.25 quantile (the former bound) would have raised it
        assert np.quantile(defects, 0.25) / 2 > 3 * tail > got["threshold"]


def test_defect_bound_skips_missing_scores_and_accepts_one_kind():
    rows = [[1.0, 5.0, np.nan], [3.0, 7.0, np.nan], [2.0, 6.0, np.nan], []]
    d, medians, n = defect_bound(rows)
    assert (d, medians, n) == (2.0, [2.0, 6.0], 6)
    assert defect_bound([4.0, 1.0, 9.0]) == (4.0, [4.0], 3)  # flat: one kind
    assert defect_bound([[], []]) == (None, [], 0)


def test_floor_never_above_the_tail_fit():
    normal = np.exp(np.random.default_rng(0).normal(0.0, 0.3, 20))
    for fpr in (0.01, 0.05, 0.3, 0.45):
        got = bounded_threshold(normal, [0.01] * 8, fpr, 4)
        assert got["floor"] <= got["tail"] + 1e-12 and got["threshold"] <= got["tail"] + 1e-12


def test_no_raise_on_the_raw_scale():
    """Scores <= 0: a normal law on the raw scale; a quantile / 2 means nothing there, no raise."""
    normal = [-0.2, 0.1, 0.3, 0.0, 0.2, -0.1, 0.15]
    got = bounded_threshold(normal, [50.0] * 8, 0.01, 4)
    assert got["space"] == "linear" and got["bound"] == "tail" and got["threshold"] == got["tail"]


def test_bounded_threshold_without_defects_is_the_tail_fit():
    s = [1.0, 1.2, 0.9, 1.1, 1.05]
    got = bounded_threshold(s, [], 0.01, 5)
    assert got["threshold"] == tail_fit(s, 0.01, 5)["threshold"] and got["bound"] == "tail"
    assert got["expected_fpr"] == 0.01 and got["n_defects"] == 0


def test_synthetic_defects_bound_the_threshold(refs):
    """PixelDiff on striped parts: synthetic defects are scored under each LOO model and the
    threshold never exceeds max(the weakest kind's median, the floor), nor the tail fit."""
    m = create_method("wf_pixdiff", MethodConfig())
    cal = calibrate_loo(m, refs, ThresholdRule())
    assert len(cal.defect_scores) == len(refs) and all(len(d) == len(SYNTH_KINDS) for d in cal.defect_scores)
    d = np.asarray(cal.defect_scores)  # references x kinds
    assert cal.fit["defect_bound"] == pytest.approx(np.median(d, axis=0).min())
    assert cal.fit["weakest_kind"] == SYNTH_KINDS[int(np.argmin(np.median(d, axis=0)))]
    assert cal.fit["weakest_kind"] in cal.description or cal.fit["bound"] == "tail"
    assert cal.threshold <= max(cal.fit["defect_bound"], cal.fit["floor"]) + 1e-12
    if cal.fit["bound"] == "raised":
        assert cal.threshold == pytest.approx(cal.fit["defect_bound"] / 2) > cal.fit["tail"]
    elif cal.fit["bound"] == "capped":
        assert cal.threshold == pytest.approx(3 * cal.fit["tail"]) < cal.fit["defect_bound"] / 2
    else:
        assert cal.threshold <= cal.fit["tail"] and cal.expected_fpr >= cal.target_fpr
    assert "expected false-alarm rate" in cal.description
    # the former rule (no synthetic defects) is the tail fit alone
    old = calibrate_loo(m, refs, ThresholdRule(), synthetic=False)
    assert old.defect_scores == []
    assert old.threshold == pytest.approx(old.fit["tail"]) and old.fit["n_defects"] == 0
    # --threshold-rule fpr: the same tail fit at the target, the target as the expected rate
    fpr = calibrate_loo(m, refs, ThresholdRule.parse("fpr"))
    assert fpr.defect_scores == [] and fpr.rule == "fpr" and fpr.threshold == pytest.approx(old.threshold)
    assert fpr.expected_fpr == fpr.target_fpr == DEFAULT_TARGET_FPR == 0.05 and fpr.threshold >= cal.threshold - 1e-12
    # a defect of every kind is scored above its own reference (PixelDiff sees any change)
    assert all(min(ds) > s for ds, s in zip(cal.defect_scores, cal.loo_scores, strict=True))


def test_lighting_views_only_for_lighting_invariant_methods(refs, monkeypatch):
    """A method that scores image-wide shifts as defects (knn's global term) is calibrated on
    the references' leave-one-out scores alone, without lighting views."""
    m = create_method("wf_pixdiff", MethodConfig())
    with_views = calibrate_loo(m, refs, ThresholdRule())
    assert all(len(v) == 6 for v in with_views.view_scores)
    monkeypatch.setattr(type(m), "lighting_invariant", property(lambda self: False))
    plain = calibrate_loo(m, refs, ThresholdRule())
    assert plain.view_scores == [[] for _ in refs] and plain.loo_scores == pytest.approx(with_views.loo_scores)
    assert plain.fit["n_samples"] == len(refs) and "no lighting views" in plain.description


def test_capped_raise_is_described(refs, monkeypatch):
    """A raise past RAISE_CAP x the tail fit stops there and the description says so."""
    from fsiad.fewshot.workflow import thresholds

    m = create_method("wf_pixdiff", MethodConfig())
    monkeypatch.setattr(thresholds, "RAISE_MARGIN", 0.01)  # half the quantile -> 100 x: far above the tail
    free = calibrate_loo(m, refs, ThresholdRule())
    half = free.fit["defect_bound"] / thresholds.RAISE_MARGIN
    assert free.fit["bound"] in ("raised", "capped") and half > 2 * free.fit["tail"], free.fit
    monkeypatch.setattr(thresholds, "RAISE_CAP", 0.5 * (half / free.fit["tail"] + 1))  # between tail and half
    cal = calibrate_loo(m, refs, ThresholdRule())
    assert cal.fit["bound"] == "capped" and cal.fit["tail"] < cal.threshold < half
    assert cal.threshold == pytest.approx(thresholds.RAISE_CAP * cal.fit["tail"])
    assert "x the tail fit" in cal.description and "synthetic-defect kinds" in cal.description
    assert "is higher" in cal.description


def test_expected_false_alarm_rate_never_above_twice_the_target():
    """Whatever the synthetic defects say, the threshold's expected false-alarm rate under the
    normal fit is at most 2 x the target (the floor), and the CLI states the module's default."""
    from fsiad.cli.workflow_options import DEFAULT_TARGET_FPR as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_TARGET_FPR
    rng = np.random.default_rng(11)
    for _ in range(200):
        normal = np.exp(rng.normal(rng.uniform(-2, 3), rng.uniform(0.05, 1.0), int(rng.integers(4, 40))))
        defects = np.exp(rng.normal(np.log(normal).mean() + rng.uniform(-3, 4), rng.uniform(0.1, 2.0), (4, 4)))
        target = float(rng.choice([0.01, 0.02, 0.05, 0.1]))
        got = bounded_threshold(normal, defects, target, n_groups=4)
        assert 0.0 <= got["expected_fpr"] <= 2 * target + 1e-9, (target, got)
        assert got["threshold"] >= got["floor"] - 1e-12 and got["threshold"] <= 3 * got["tail"] + 1e-9


def test_tail_fit_pools_the_methods_typical_scale():
    """The measured log-scale counts K references, the method's typical one PRIOR_GROUPS (2);
    independent computation. No prior on the raw scale; a prior equal to the measured scale
    changes nothing."""
    from scipy.stats import norm

    assert PRIOR_GROUPS == 2
    close = [4.88, 4.41, 4.52, 6.00]  # four references that agree by chance (textile seed 4)
    lx = np.log(close)
    s_m = max(1.4826 * np.median(np.abs(lx - np.median(lx))), 0.1)
    s = np.sqrt((4 * s_m ** 2 + 2 * 0.25 ** 2) / 6) * np.sqrt(1 + 1 / 4)
    got = tail_fit(close, 0.05, 4, prior_scale=0.25)
    assert got["sigma_measured"] == pytest.approx(s_m) and got["prior_scale"] == 0.25
    assert got["sigma"] == pytest.approx(s, rel=1e-12) and s > s_m * np.sqrt(1.25)  # widened
    assert got["threshold"] == pytest.approx(float(np.exp(np.median(lx) + norm.ppf(0.95) * s)), rel=1e-12)
    assert tail_fit(close, 0.05, 4)["sigma"] == pytest.approx(s_m * np.sqrt(1.25))  # no prior: as before
    wide = np.exp(np.log(5.0) + np.array([-0.6, -0.2, 0.2, 0.6]))  # references that disagree: narrowed
    assert tail_fit(wide, 0.05, 4, prior_scale=0.25)["sigma"] < tail_fit(wide, 0.05, 4)["sigma"]
    same = tail_fit(close, 0.05, 4, prior_scale=s_m)
    assert same["sigma"] == pytest.approx(s_m * np.sqrt(1.25))
    lin = tail_fit([-1.0, 0.0, 1.0], 0.05, 3, prior_scale=0.25)
    assert lin["prior_scale"] is None and lin["sigma"] == pytest.approx(tail_fit([-1.0, 0.0, 1.0], 0.05, 3)["sigma"])
    # the floor uses the same pooled scale, so the threshold's expected rate stays <= 2 x target
    got = bounded_threshold(close, [[1.0] * 4] * 4, 0.05, 4, prior_scale=0.25)
    assert got["floor"] == pytest.approx(float(np.exp(np.median(lx) + norm.ppf(0.9) * s)), rel=1e-12)
    assert got["bound"] == "floor" and got["expected_fpr"] == pytest.approx(0.1)


def test_calibration_uses_the_methods_typical_scale(refs, monkeypatch):
    """calibrate_loo pools the method's ``normal_log_spread`` and says so in the description."""
    m = create_method("wf_pixdiff", MethodConfig())
    plain = calibrate_loo(m, refs, ThresholdRule())
    assert plain.fit["prior_scale"] is None and "pooled" not in plain.description
    monkeypatch.setattr(type(m), "normal_log_spread", property(lambda self: 0.25))
    cal = calibrate_loo(m, refs, ThresholdRule())
    assert cal.loo_scores == pytest.approx(plain.loo_scores)
    assert cal.fit["prior_scale"] == 0.25 and cal.fit["sigma_measured"] == pytest.approx(plain.fit["sigma_measured"])
    k = len(refs) - len(cal.fit["excluded"])
    want = np.sqrt((k * plain.fit["sigma_measured"] ** 2 + 2 * 0.25 ** 2) / (k + 2)) * np.sqrt(1 + 1 / k)
    assert cal.fit["sigma"] == pytest.approx(want, rel=1e-9)
    assert "pooled with the method's typical 0.25" in cal.description
