import pytest
import torch
from fsiad.fewshot.methods import AnomalyMethod, MethodConfig, create_method
from fsiad.fewshot.methods.patchcore import reweighted_scores

from tests.memory_helpers import aurocs, require_weights, synthetic


def test_reweighting_matches_paper_formula():
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(50, 4, generator=g)
    query = torch.randn(3, 4, generator=g) * 3
    d_all = torch.cdist(query, memory)
    d_star, m_star = d_all.min(1)
    out = reweighted_scores(query, d_star, m_star, memory, b=5)
    for i in range(3):
        nb = torch.cdist(memory[m_star[i]][None], memory)[0].topk(5, largest=False).indices  # N_b(m*), m* first
        ref = (1 - torch.exp(d_star[i]) / torch.exp(d_all[i, nb]).sum()) * d_star[i]
        torch.testing.assert_close(out[i], ref)
    assert torch.equal(reweighted_scores(query, d_star, m_star, memory, b=1), d_star)


def _tiny(tmp_opts=None, **kw):
    opts = {"coreset_ratio": 0.25, **(tmp_opts or {})}
    return create_method("patchcore", MethodConfig(encoder="resnet18", image_size=64, allow_random=True,
                                                   options=opts, **kw))


def test_streamed_fit_coreset_size_and_exact_save_load(tmp_path):
    m = _tiny()
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    m.fit(iter([x[:2], x[2:4]]))  # an iterable of batches
    n_patches = 4 * 8 * 8  # layer2 grid of a 64 px input
    assert m.n_train_patches == n_patches and m.memory.shape[0] == n_patches // 4
    before = m.predict(x[4:])
    m.save(tmp_path / "model")
    loaded = AnomalyMethod.load(tmp_path / "model")
    after = loaded.predict(x[4:])
    assert torch.equal(before.image_scores, after.image_scores)
    assert torch.equal(before.anomaly_maps, after.anomaly_maps)
    assert loaded.describe()["memory_size"] == n_patches // 4


def test_training_image_scores_near_zero_without_coreset():
    m = _tiny({"coreset_ratio": 1.0})
    x = torch.rand(3, 3, 64, 64)
    m.fit(x)
    assert float(m.predict(x).anomaly_maps.max()) < 1e-2
    with pytest.raises(ValueError, match="needs normal training images"):
        m.fit(None)


@pytest.mark.needs_weights
def test_ranks_and_localises_synthetic_defects_with_real_effnet():
    require_weights("tf_efficientnet_lite0")
    m = create_method("patchcore", MethodConfig(image_size=128, batch_size=16))
    train, test, labels, masks = synthetic(m, "object", 128, n_train=6, n_good=4, n_defect=4)
    m.fit(train)
    img, pix = aurocs(m.predict(test), labels, masks)
    assert img >= 0.9 and pix >= 0.85, (img, pix)
