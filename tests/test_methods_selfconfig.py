"""knn default: synthetic defects, label-free self-configuration, native geometry, save/load."""

import math

import numpy as np
import pytest
import torch
from fsiad.fewshot.data.defects import GLOBAL_KINDS, KINDS, LOCAL_KINDS, make_defect
from fsiad.fewshot.methods import MethodConfig, create_method
from fsiad.fewshot.methods.knn_auto import (
    NativeBatch,
    global_distance,
    iter_items,
    map_to_shape,
    map_to_square,
    native_shape,
    pooled,
)
from fsiad.fewshot.preprocess import Preprocess

from tests.memory_helpers import require_weights


def _image(h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 6.28, h)[:, None]
    x = torch.linspace(0, 9.42, w)[None]
    base = 0.5 + 0.2 * torch.sin(3 * x) * torch.cos(2 * y)
    return (base[None].repeat(3, 1, 1) + 0.05 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_defect_inside_mask_and_nothing_outside(kind):
    img = _image()
    for seed in range(5):
        out, mask = make_defect(img, kind, seed)
        assert out.shape == img.shape and mask.shape == img.shape[1:] and mask.dtype == torch.bool
        changed = (out - img).abs().amax(0) > 1e-6
        assert changed.any(), (kind, seed)  # a defect changes something
        assert not (changed & ~mask).any(), (kind, seed)  # ... and only inside its mask
        if kind in LOCAL_KINDS:
            assert 0 < mask.float().mean() < 0.25
        else:
            assert kind in GLOBAL_KINDS and mask.all()
        assert 0 <= float(out.min()) and float(out.max()) <= 1
    a, ma = make_defect(img, kind, 3)
    b, mb = make_defect(img, kind, 3)
    assert torch.equal(a, b) and torch.equal(ma, mb)  # deterministic for a seed


@pytest.mark.parametrize("kind", KINDS)
def test_defect_on_a_region_stays_on_it(kind):
    """With a region (the part), a local defect lies on it and changes nothing else; the first
    draw is the one without a region, so a region that holds it changes nothing; global kinds
    ignore the region."""
    img = _image(64, 96)
    region = torch.zeros(64, 96, dtype=torch.bool)
    region[26:38, 10:86] = True  # a bar, 15 % of the image
    for seed in range(5):
        out, mask = make_defect(img, kind, seed, region)
        changed = (out - img).abs().amax(0) > 1e-6
        if kind in LOCAL_KINDS:
            assert mask.any() and not (mask & ~region).any(), (kind, seed)
            assert changed.any() and not (changed & ~mask).any(), (kind, seed)
        else:
            assert mask.all() and torch.equal(out, make_defect(img, kind, seed)[0])
        free = make_defect(img, kind, seed)
        everywhere = make_defect(img, kind, seed, torch.ones(64, 96, dtype=torch.bool))
        assert torch.equal(free[0], everywhere[0]) and torch.equal(free[1], everywhere[1])
    with pytest.raises(ValueError, match="does not match"):
        make_defect(img, "blob", 0, torch.ones(10, 10, dtype=torch.bool))


def test_native_shape_keeps_aspect_and_area():
    h, w = native_shape(460, 1130, 224, 14)
    assert h % 14 == 0 and w % 14 == 0
    assert abs(w / h - 1130 / 460) < 0.2 and abs(h * w / 224**2 - 1) < 0.1
    assert native_shape(300, 300, 224, 14) == (224, 224)
    assert native_shape(10, 1000, 224, 14)[0] >= 14  # extreme aspect clamped, at least one patch


def test_mask_through_non_square_path_lands_where_it_was():
    """A mask resized onto the native patch grid and back to the square output overlaps the
    evaluation's own square mask, and at the image's size it lands on the original pixels."""
    h, w = 250, 600
    mask = np.zeros((h, w), bool)
    mask[150:190, 420:470] = True
    work = native_shape(h, w, 224, 14)
    small = torch.nn.functional.interpolate(torch.from_numpy(mask).float()[None, None], size=(work[0] // 14, work[1] // 14),
                                            mode="area")[0, 0]
    sq = map_to_square(small, 224, 0.0) > 0.25
    ref = Preprocess(224).masks([mask])[0]
    iou = (sq & ref).sum() / (sq | ref).sum()
    assert iou > 0.6, float(iou)
    own = map_to_shape(small, work, (h, w), 0.0) > 0.25
    iou = (own & torch.from_numpy(mask)).sum() / (own | torch.from_numpy(mask)).sum()
    assert iou > 0.6, float(iou)
    ys, xs = torch.nonzero(own, as_tuple=True)
    assert abs(float(ys.float().mean()) - 169.5) < 6 and abs(float(xs.float().mean()) - 444.5) < 6


def _random_knn(**opts):
    return create_method("knn", MethodConfig(encoder="dinov2_vits14", image_size=56, allow_random=True,
                                             options={"budget": 8, **opts}))


def _refs(n=3, h=56, w=84):
    arrays = [(_image(h, w, seed=i) * 255).round().byte().permute(1, 2, 0).numpy() for i in range(n)]
    return NativeBatch.from_arrays(arrays)


def test_selfconfig_deterministic_and_blind_to_test_labels():
    refs = _refs()
    m1 = _random_knn().fit(refs)
    m2 = _random_knn().fit(refs)
    assert m1.selfconfig["chosen"] == m2.selfconfig["chosen"]
    assert m1.selfconfig["candidates"] == m2.selfconfig["candidates"]
    assert set(m1.selfconfig["candidates"]) == {"mid", "last", "mid+last", "mid+global", "last+global",
                                                "mid+last+global"}
    # fit takes no labels at all; scoring a labelled test set in any order (or permuting the
    # labels) leaves the fitted choice and the state untouched
    test = _refs(4, 70, 56)
    labels = np.array([0, 1, 0, 1])
    state = {k: v.clone() for k, v in m1.get_state().items()}
    s1 = m1.predict(test).image_scores
    perm = np.random.default_rng(0).permutation(4)
    _ = labels[perm]
    s2 = m1.predict(test[perm[0]:perm[0] + 1]).image_scores
    assert torch.allclose(s1[perm[0]], s2[0], atol=1e-5)
    assert all(torch.equal(state[k], v) for k, v in m1.get_state().items())
    d = m1.describe()
    assert d["selfconfig"]["chosen"] == d["configuration"]
    assert d["preset"] == "auto" and d["geometry"] == "native" and "seconds" in d["selfconfig"]
    shuffled = NativeBatch([refs.images[i] for i in (2, 0, 1)], [refs.sizes[i] for i in (2, 0, 1)])
    m4 = _random_knn().fit(shuffled)  # the references' order does not matter either
    assert m4.selfconfig["chosen"] == m1.selfconfig["chosen"]
    m3 = _random_knn(seed=5).fit(refs)  # another seed draws other defects
    assert m3.selfconfig["candidates"] != m1.selfconfig["candidates"]


def test_save_load_keeps_choice(tmp_path):
    refs = _refs()
    m = _random_knn().fit(refs)
    test = _refs(3, 84, 56)
    r = m.predict(test)
    assert r.anomaly_maps.shape == (3, 56, 56)
    m.save(tmp_path / "model")
    from fsiad.fewshot.methods.base import AnomalyMethod

    loaded = AnomalyMethod.load(tmp_path / "model", allow_random=True)
    assert loaded.weights == m.weights and loaded.work_side == m.work_side
    assert loaded.selfconfig["chosen"] == m.selfconfig["chosen"]
    r2 = loaded.predict(test)
    assert torch.equal(r.image_scores, r2.image_scores) and torch.equal(r.anomaly_maps, r2.anomaly_maps)


def test_fixed_presets_reachable_and_square_reproduces_old_default():
    x = torch.rand(3, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    old = _random_knn(preset="mid", geometry="square").fit(x[:2])
    assert old.layers == [5, 8] and old.memory.shape == (2 * 4 * 16, 768) and old.selfconfig is None
    last = _random_knn(preset="last").fit(x[:2])
    assert last.layers == [11] and last.memory.shape[1] == 384
    both = _random_knn(preset="mid+last").fit(x[:2])
    assert set(both.memories) == {"mid", "last"} and set(both.norm) == {"mid", "last"}
    custom = _random_knn(layers=[8]).fit(x[:2])
    assert custom.layers == [8] and custom.selfconfig is None
    with pytest.raises(ValueError, match="geometry=square"):
        old.predict(torch.rand(1, 3, 56, 70))


def test_large_images_get_a_larger_working_side():
    m = _random_knn(max_side=112)
    assert m.choose_work_side([(460, 1130)] * 4) == 112  # capped by max_side
    # a 60 px image: an 8 px defect (default min_defect_px) should cover a 14 px patch -> enlarged
    assert m.choose_work_side([(60, 60)] * 4) == 112
    assert _random_knn(max_side=112, min_defect_px=24).choose_work_side([(60, 60)] * 4) == 56
    sq = _random_knn(geometry="square")
    assert sq.choose_work_side([(460, 1130)]) == 56


@pytest.mark.needs_weights
def test_real_dinov2_selfconfig_on_wide_synthetic():
    require_weights("dinov2_vits14")
    from fsiad.fewshot.data.synthetic import render_category

    parts = render_category("wide", 92, 3, 2, 2, 0)
    m = create_method("knn", MethodConfig(image_size=112, options={"budget": 8}))
    m.fit(NativeBatch.from_arrays([i for i, _ in parts.pop("train")]))
    assert m.selfconfig["chosen"] in ("mid", "mid+last", "mid+global", "mid+last+global")
    items = [(i, int(g != "good")) for g, lst in parts.items() for i, _ in lst]
    r = m.predict(NativeBatch.from_arrays([i for i, _ in items]))
    assert r.anomaly_maps.shape == (4, 112, 112) and torch.isfinite(r.image_scores).all()


def test_calibration_refits_use_the_full_fit_configuration(tmp_path):
    """fit_references chooses on all K references, the leave-one-out refits keep that choice and
    its normalisation, and the final model equals a plain fit on all K."""
    from fsiad.fewshot.data.base import Sample
    from fsiad.fewshot.workflow.runner import fit_references
    from fsiad.fewshot.workflow.thresholds import ThresholdRule
    from PIL import Image

    paths = []
    for i in range(4):
        arr = (_image(56, 84, seed=i) * 255).round().byte().permute(1, 2, 0).numpy()
        p = tmp_path / f"ref{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(Sample(path=p, label=0))
    plain = _random_knn()
    plain.fit(plain.prepare(paths))
    m = _random_knn()
    seen = []
    original = type(m)._fit

    def spy(self, images):
        original(self, images)
        seen.append((dict(self.weights), dict(self.norm), self.work_side, self.global_norm))

    type(m)._fit = spy
    try:
        cal, _ = fit_references(m, paths, 0, ThresholdRule.parse("max"))
    finally:
        type(m)._fit = original
    full, *loo = seen
    assert len(loo) == 4 and all(s == full for s in loo)  # every refit scored with the full fit's choice
    assert m.weights == plain.weights and m.selfconfig["chosen"] == plain.selfconfig["chosen"]
    test = _refs(2, 70, 56)
    assert torch.equal(m.predict(test).image_scores, plain.predict(test).image_scores)
    assert cal.threshold is not None and len(cal.loo_scores) == 4


def test_global_term_kept_only_when_it_earns_its_place():
    from fsiad.fewshot.methods.knn_auto import choose, global_helps

    def r(local, glob):
        return {"local": local, "global": glob, "score": (local + glob) / 2, "dprime": 1.0}

    # a texture: the term removes all global errors at no local cost -> chosen
    tex = {"mid": r(0.88, 0.84), "mid+global": r(0.89, 1.0), "mid+last": r(0.87, 0.84),
           "mid+last+global": r(0.88, 0.97)}
    assert global_helps(tex, "mid+global") and choose(tex) == "mid+global"
    # the base is chosen on local defects: mid+last's better global AUROC does not buy it
    # the map (magnetic_tile seed 0's validation), and within 0.005 the better mean wins
    mt = {"mid": r(0.9648, 0.6992), "mid+last": r(0.957, 0.7656), "last": r(0.99, 0.9)}
    assert mt["mid+last"]["score"] > mt["mid"]["score"] and choose(mt) == "mid"
    assert choose({"mid": r(0.960, 0.70), "mid+last": r(0.957, 0.77)}) == "mid+last"
    # global_term=on (only +global rows) and off (none)
    assert choose({"mid+global": r(0.9, 0.9), "mid+last+global": r(0.8, 1.0)}) == "mid+global"
    assert choose({"mid": r(0.9, 0.5), "mid+last": r(0.95, 0.5)}) == "mid+last"
    # varied normals: a partial gain (a third of the errors) with a local cost -> the base wins,
    # although the +global candidate has the higher mean validation AUROC
    var = {"mid": r(0.96, 0.75), "mid+global": r(0.93, 0.85), "mid+last": r(0.94, 0.73),
           "mid+last+global": r(0.93, 0.83)}
    assert var["mid+global"]["score"] > var["mid"]["score"]
    assert not global_helps(var, "mid+global") and choose(var) == "mid"
    # a full gain that costs the local defects more than half of it is refused as well ...
    assert not global_helps({"mid": r(0.95, 0.9), "mid+global": r(0.89, 1.0)}, "mid+global")
    assert not global_helps({"mid": r(0.95, 0.8), "mid+global": r(0.84, 1.0)}, "mid+global")
    # ... one that costs up to half of its gain is kept (textile seed 2's validation: all 25
    # global pair errors removed for 6 local ones), and so is any cost up to 0.02
    seed2 = {"mid": r(0.9648, 0.9023), "mid+global": r(0.9414, 1.0)}
    assert global_helps(seed2, "mid+global") and choose(seed2) == "mid+global"
    assert global_helps({"mid": r(0.95, 0.98), "mid+global": r(0.931, 1.0)}, "mid+global")
    assert not global_helps({"mid": r(0.95, 0.98), "mid+global": r(0.929, 1.0)}, "mid+global")
    assert global_helps(var, "mid")  # bases always qualify


def test_global_term_on_scores_state_and_export(tmp_path):
    refs = _refs(3)
    on = _random_knn(preset="mid", global_term="on").fit(refs)
    off = _random_knn(preset="mid").fit(refs)
    assert on.global_memory is not None and on.global_memory.shape[0] == 3 * 4  # one per view (flips)
    assert off.global_memory is None and "global" not in off.describe()
    unit, mean, clip = on.global_norm
    assert unit > 0 and mean > 0 and clip == 1.0 and on.describe()["configuration"] == "mid+global"
    # a reference itself has global distance 0: nearer than a held-out reference, so no term
    s_on, s_off = on.predict(refs[:1]).image_scores, off.predict(refs[:1]).image_scores
    assert torch.allclose(s_on, s_off, atol=1e-5)
    # an image-wide change raises the score by unit * (distance / mean - 1)
    dark = NativeBatch([(refs.images[0].float() * 0.4).byte()], refs.sizes[:1])
    d = global_distance(pooled(on._encode(on._working(list(iter_items(dark))), ["mid"])[0]["mid"])[None],
                        on.global_memory)
    expected = unit * (float(d[0]) / mean - 1.0)
    assert expected > 0
    assert float(on.predict(dark).image_scores - off.predict(dark).image_scores) == pytest.approx(expected, rel=1e-3)
    on.save(tmp_path / "model")
    from fsiad.fewshot.methods.base import AnomalyMethod

    loaded = AnomalyMethod.load(tmp_path / "model", allow_random=True)
    assert loaded.global_norm == on.global_norm and torch.equal(loaded.global_memory, on.global_memory)
    assert torch.equal(loaded.predict(dark).image_scores, on.predict(dark).image_scores)
    # a model saved before the clip (global.norm = [unit, mean]) keeps its linear term
    legacy = {k: v for k, v in on.get_state().items()}
    legacy["global.norm"] = legacy["global.norm"][:2]
    old = _random_knn(preset="mid", global_term="on")
    old.set_state(legacy)
    old.fitted = True  # as AnomalyMethod.load does after set_state
    assert old.global_norm == (unit, mean, 0.0)
    assert torch.allclose(old.predict(refs[:1]).image_scores, s_off - unit, atol=1e-4)
    off_auto = _random_knn(global_term="off").fit(refs)
    assert not any(c.endswith("+global") for c in off_auto.selfconfig["candidates"])


def test_knn_reports_its_global_term_as_image_terms():
    fresh = _random_knn(global_term="on")  # before fit: no term, nothing to read
    assert fresh.global_norm is None and fresh.global_memory is None and fresh.lighting_invariant
    refs = _refs(3)
    on = _random_knn(preset="mid", global_term="on").fit(refs)
    off = _random_knn(preset="mid").fit(refs)
    dark = NativeBatch([(refs.images[0].float() * 0.4).byte()], refs.sizes[:1])
    both = NativeBatch.concat([dark, refs[:1]])
    res = on.predict(both)
    assert res.image_terms is not None and float(res.image_terms[0]) > 0 and float(res.image_terms[1]) == 0.0
    assert torch.allclose(res.image_scores - res.image_terms, off.predict(both).image_scores, atol=1e-4)
    assert off.predict(both).image_terms is None


def test_knn_states_a_typical_log_spread_only_for_normalised_scores():
    """The threshold's scale prior needs scores in normal-patch units: preset=auto (and fixed
    multi-member presets) normalise; a single fixed member scores raw distances."""
    from fsiad.fewshot.methods.base import AnomalyMethod
    from fsiad.fewshot.methods.knn import NORMAL_LOG_SPREAD

    refs = _refs(3)
    auto = _random_knn().fit(refs)
    assert auto.norm and auto.normal_log_spread == NORMAL_LOG_SPREAD == 0.25
    both = _random_knn(preset="mid+last").fit(refs)
    assert both.normal_log_spread == NORMAL_LOG_SPREAD
    assert _random_knn(preset="mid").fit(refs).normal_log_spread is None
    assert _random_knn().normal_log_spread is None  # not fitted: nothing to say
    assert AnomalyMethod.normal_log_spread.fget(auto) is None  # the base class states no prior


def _screws(n_train=4, size=96, seed=0):
    from fsiad.fewshot.data.synthetic import render_category

    parts = render_category("screw", size, n_train, 2, 2, seed)
    return NativeBatch.from_arrays([i for i, _ in parts.pop("train")]), parts


def test_align_auto_rotates_freely_rotated_parts_only():
    refs, parts = _screws()
    m = _random_knn().fit(refs)
    rec = m.describe()["alignment"]
    assert m.align_on and rec["active"] and rec["mode"] == "auto" and rec["spread_deg"] > 15
    assert "rotated to the part's principal axis" in rec["reason"] and len(rec["angles_deg"]) == 4
    # a texture: no plain background -> no rotation, and exactly the unrotated scores and maps
    tex = _refs()
    auto, off = _random_knn().fit(tex), _random_knn(align="off").fit(tex)
    assert not auto.align_on and "plain background" in auto.describe()["alignment"]["reason"]
    assert "alignment" not in off.describe()
    test = _refs(2, 84, 56)
    a, b = auto.predict(test), off.predict(test)
    assert torch.equal(a.image_scores, b.image_scores) and torch.equal(a.anomaly_maps, b.anomaly_maps)
    # one orientation (the elongated pin held within a few degrees): no rotation either
    from fsiad.fewshot.data.synthetic import render_category

    pins = render_category("elongated", 48, 4, 0, 0, 0)["train"]
    held = _random_knn().fit(NativeBatch.from_arrays([i for i, _ in pins]))
    assert not held.align_on and "agree within 15" in held.describe()["alignment"]["reason"]
    with pytest.raises(ValueError, match="geometry=native"):
        _random_knn(align="on", geometry="square")


def test_aligned_model_saves_loads_and_refits_with_its_alignment(tmp_path):
    refs, parts = _screws()
    m = _random_knn().fit(refs)
    test = NativeBatch.from_arrays([i for lst in parts.values() for i, _ in lst])
    r = m.predict(test)
    scores, maps = m.predict_native(test)
    assert [tuple(x.shape) for x in maps] == [s for s in test.sizes]  # the images' own frame and size
    m.save(tmp_path / "model")
    from fsiad.fewshot.methods.base import AnomalyMethod

    loaded = AnomalyMethod.load(tmp_path / "model", allow_random=True)
    assert loaded.align_on and loaded.describe()["alignment"] == m.describe()["alignment"]
    r2 = loaded.predict(test)
    assert torch.equal(r.image_scores, r2.image_scores) and torch.equal(r.anomaly_maps, r2.anomaly_maps)
    # the threshold calibration's refits on K-1 references keep the full fit's alignment, even
    # where K-1 references alone would not have chosen it
    with m.frozen_configuration():
        m.fit(refs[:1])
        assert m.align_on
    forced = _random_knn(align="on").fit(_refs())
    assert forced.align_on and forced.describe()["alignment"]["reason"] == "align=on"


def test_aligned_knn_plants_its_synthetic_defects_on_the_part():
    """Self-configuration and the threshold calibration draw their synthetic defects on the part
    when the images are aligned (real defects lie on the part, not on the plain background)."""
    from fsiad.fewshot.workflow.thresholds import SYNTH_KINDS, defect_views

    refs, _ = _screws()
    m = _random_knn().fit(refs)
    part = m.defect_region(refs.images[0])
    assert part is not None and part.shape == refs.images[0].shape[1:] and 0.01 < float(part.float().mean()) < 0.2
    assert _random_knn().fit(_refs()).defect_region(refs.images[0]) is None  # not aligned: anywhere
    one = refs[:1]
    bad = defect_views(one, SYNTH_KINDS, 3, m.defect_region)
    free = defect_views(one, SYNTH_KINDS, 3)
    base = one.images[0].int()
    for y in bad.images:
        changed = (y.int() - base).abs().amax(0) > 0
        assert changed.any() and not (changed & ~part).any()
    assert any(((z.int() - base).abs().amax(0) > 0)[~part].any() for z in free.images)  # without: off the part too


@pytest.mark.needs_weights
def test_real_dinov2_aligned_map_marks_the_defect_where_it_is_in_the_image():
    """A rotated screw with a dark notch painted on its shaft: with alignment the map, back in the
    image's own frame, peaks on the notch; the normal screws at new angles score below it."""
    require_weights("dinov2_vits14")
    refs, parts = _screws(size=160, seed=1)
    m = create_method("knn", MethodConfig(image_size=112, options={"budget": 8}))
    m.fit(refs)
    assert m.align_on
    goods = [i for i, _ in parts["good"]]
    img = goods[0].copy()
    # the part's pixels are bright; paint a dark disc on the part, away from its centroid
    from fsiad.fewshot.ops.align import principal_pose

    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    p = principal_pose(t)
    h, w = img.shape[:2]
    cx, cy = p.cx * w + 0.25 * 0.7 * h * math.cos(p.angle), p.cy * h + 0.25 * 0.7 * h * math.sin(p.angle)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= 4.0**2
    img[disc] = (30, 30, 30)
    scores, maps = m.predict_native(NativeBatch.from_arrays([img, *goods]))
    iy, ix = divmod(int(torch.argmax(maps[0])), w)
    assert math.hypot(ix + 0.5 - cx, iy + 0.5 - cy) < 12, ((ix, iy), (cx, cy))
    assert float(scores[0]) > float(scores[1:].max())


def test_aligned_knn_without_flipped_views_points_the_part_one_way(monkeypatch):
    """``augment=none`` has no half-turned views, so the aligned part must point one way: a
    reference turned by 180 degrees then scores like itself; with the pose's direction ignored
    it would score as a different part."""
    from fsiad.fewshot.methods import knn as knn_module

    refs, _ = _screws(size=128)
    turned = NativeBatch([torch.rot90(refs.images[0], 2, dims=(1, 2)), refs.images[0]], [refs.sizes[0]] * 2)
    m = _random_knn(augment="none", align="on", preset="mid").fit(refs)
    s = m.predict(turned).image_scores
    monkeypatch.setattr(knn_module, "directed", lambda pose: pose)
    u = _random_knn(augment="none", align="on", preset="mid").fit(refs).predict(turned).image_scores
    assert abs(float(s[0] - s[1])) < 0.25 * abs(float(u[0] - u[1])), (s.tolist(), u.tolist())


def _boards(size=128, seed=3, n_train=4, n_good=3, n_defect=4):
    from fsiad.fewshot.data.synthetic import render_category

    parts = render_category("board", size, n_train, n_good, n_defect, seed)
    return NativeBatch.from_arrays([i for i, _ in parts.pop("train")]), parts


def test_position_grid_is_the_nearest_reference_patch_in_the_same_cell():
    """``position=on``: each patch's distance is to the references' patches in its own grid cell
    only (brute force over cells and references), for both metrics and k."""
    torch.manual_seed(0)
    feat, refs = torch.randn(5, 7, 12), torch.randn(3, 5, 7, 12)
    for metric, k in (("cosine", 1), ("l2", 1), ("l2", 2)):
        m = _random_knn(position="on", metric=metric, k=k)
        got = m._grid(feat, refs.reshape(-1, 12))
        want = torch.empty(5, 7)
        for y in range(5):
            for x in range(7):
                if metric == "cosine":
                    d = 1 - torch.nn.functional.cosine_similarity(refs[:, y, x], feat[y, x][None], dim=-1)
                else:
                    d = (refs[:, y, x] - feat[y, x]).norm(dim=-1)
                want[y, x] = d.sort().values[:k].mean()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        anywhere = _random_knn(metric=metric, k=k)._grid(feat, refs.reshape(-1, 12))
        assert (got >= anywhere - 1e-5).all() and (got > anywhere + 1e-3).any()  # fewer candidates, farther
    with pytest.raises(ValueError, match="patch grid 4 x 7 differs"):
        _random_knn(position="on")._grid(torch.randn(4, 7, 12), refs.reshape(-1, 12)[:-12])


def test_position_aligns_boards_keeps_one_size_and_survives_save_load(tmp_path):
    refs, parts = _boards()
    m = _random_knn(position="on")
    m.fit(refs)
    rec = m.describe()["alignment"]
    assert m.align_on and rec["mode"] == "position" and rec["turn"] and "turned to its axis" in rec["reason"]
    h, w = m.position_shape
    assert m.memories["mid"].shape[0] == 4 * (h // 14) * (w // 14)  # one grid per reference: no flipped views
    imgs = [i for g in ("good", "missing") for i, _ in parts[g]]
    wide = np.concatenate([imgs[0], imgs[0][:, :64]], axis=1)  # another size: moved onto the references' grid
    a = m.predict_native(NativeBatch.from_arrays([*imgs, wide]))
    assert [tuple(x.shape) for x in a[1]][-1] == (128, 192)  # the map at the image's own size
    m.save(tmp_path / "m")
    from fsiad.fewshot.methods.base import AnomalyMethod

    b = AnomalyMethod.load(tmp_path / "m").predict_native(NativeBatch.from_arrays([*imgs, wide]))
    torch.testing.assert_close(a[0], b[0])
    assert AnomalyMethod.load(tmp_path / "m").describe()["alignment"] == rec
    texture = NativeBatch.from_arrays([(_image(64, 64, seed=i) * 255).round().byte().permute(1, 2, 0).numpy()
                                       for i in range(3)])
    t = _random_knn(position="on").fit(texture)
    assert not t.align_on and "compared as taken" in t.describe()["alignment"]["reason"]
    with pytest.raises(ValueError, match="working sizes differ"):
        _random_knn(position="on").fit(_refs(2, 56, 84).concat([_refs(2, 56, 84), _refs(1, 84, 56)]))


@pytest.mark.needs_weights
def test_real_dinov2_position_finds_a_missing_pad_that_anywhere_misses():
    """A board with a missing pad: patches compared anywhere find bare board like it elsewhere;
    compared in place (position=on) the missing pad scores above every normal board."""
    require_weights("dinov2_vits14")
    refs, parts = _boards(size=128, seed=3, n_good=4, n_defect=6)
    missing = [i for i, _ in parts["missing"]]
    goods = [i for i, _ in parts["good"]]
    out = {}
    for position in ("off", "on"):
        m = create_method("knn", MethodConfig(image_size=112, options={"budget": 8, "position": position}))
        m.fit(refs)
        s = m.predict(NativeBatch.from_arrays([*missing, *goods])).image_scores
        out[position] = (s[: len(missing)], s[len(missing):])
    on_bad, on_good = out["on"]
    assert float(on_bad.min()) > float(on_good.max())
    off_bad, off_good = out["off"]
    assert float((off_bad > off_good.max()).float().mean()) < 1.0  # anywhere misses some missing pads
