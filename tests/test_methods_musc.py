import pytest
import torch
import torch.nn.functional as F
from fsiad.fewshot.methods import MethodConfig, create_method
from fsiad.fewshot.methods.musc import mutual_scores, rscin

from tests.memory_helpers import aurocs, require_weights, synthetic


def _loop_reference(z, fraction):
    n, p, _ = z.shape
    out = torch.empty(n, p)
    for i in range(n):
        per_image = torch.stack([torch.cdist(z[i], z[j]).min(1).values for j in range(n) if j != i], 1)
        k = max(1, int((n - 1) * fraction))
        out[i] = per_image.topk(k, dim=1, largest=False).values.mean(1)
    return out


@pytest.mark.parametrize("block", [1, 3, 16])
def test_mutual_scores_match_loop_reference(block):
    z = F.normalize(torch.randn(7, 5, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    torch.testing.assert_close(mutual_scores(z, 0.3, block), _loop_reference(z, 0.3), atol=1e-4, rtol=1e-4)


def test_rscin_matches_explicit_graph():
    g = torch.Generator().manual_seed(1)
    s, e = torch.rand(6, generator=g), torch.randn(6, 4, generator=g)
    sn = (s - s.min()) / (s.max() - s.min())
    en = F.normalize(e, dim=1)
    w = en @ en.T
    ref = []
    for k in (1, 2, 3):
        mask = torch.zeros_like(w)
        mask.scatter_(1, w.topk(k, dim=1).indices, 1.0)
        p = (w * mask) / (w * mask).sum(1, keepdim=True)
        ref.append(p @ sn)
    torch.testing.assert_close(rscin(s, e, (1, 2, 3)), torch.stack(ref).mean(0))
    torch.testing.assert_close(rscin(s, e, (1,)), sn)  # k = 1: the image itself only
    assert torch.equal(rscin(s, e, (0,)), s)


def test_transductive_contract_and_subsets():
    m = create_method("musc", MethodConfig(image_size=56, allow_random=True,
                                           options={"subset_size": 3, "r_list": [1, 3]}))
    assert m.transductive and m.regime == "zero-shot-transductive" and m.layers == [2, 5, 8, 11]
    with pytest.raises(ValueError, match="no reference images"):
        m.fit(torch.rand(1, 3, 56, 56))
    m.fit()
    x = torch.rand(7, 3, 56, 56)
    r = m.predict(iter([x[:4], x[4:]]))
    assert r.anomaly_maps.shape == (7, 56, 56) and torch.isfinite(r.image_scores).all()
    with pytest.raises(ValueError, match="at least 2"):
        m.predict(x[:1])


@pytest.mark.needs_weights
def test_ranks_and_localises_synthetic_defects_with_real_dinov2():
    require_weights("dinov2_vits14")
    m = create_method("musc", MethodConfig(image_size=112, batch_size=16))
    _, test, labels, masks = synthetic(m, "texture", 112, n_train=0, n_good=8, n_defect=4)
    m.fit()
    img, pix = aurocs(m.predict(test), labels, masks)
    assert img >= 0.9 and pix >= 0.85, (img, pix)
