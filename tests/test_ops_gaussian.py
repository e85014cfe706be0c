import pytest
import torch
from fsiad.fewshot.ops.gaussian import GaussianAccumulator, fit_gaussian, mahalanobis


def test_fit_and_mahalanobis_match_explicit_formula():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 6, 5, generator=g) @ torch.randn(5, 5, generator=g) + 3
    query = torch.randn(7, 6, 5, generator=g)
    stats = fit_gaussian(train, eps=0.01)
    t = train.double()
    for p in range(6):
        mu = t[:, p].mean(0)
        cov = torch.cov(t[:, p].T) + 0.01 * torch.eye(5, dtype=torch.float64)
        torch.testing.assert_close(stats.mean[p].double(), mu, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats.cov[p].double(), cov, atol=1e-4, rtol=1e-4)
        d = query[:, p].double() - mu
        ref = torch.einsum("nc,cd,nd->n", d, torch.linalg.pinv(cov), d).sqrt()
        torch.testing.assert_close(mahalanobis(query, stats, chunk=4)[:, p].double(), ref, atol=1e-3, rtol=1e-4)


def test_streaming_equals_one_shot():
    x = torch.randn(30, 4, 3, generator=torch.Generator().manual_seed(1)) * 100 + 1000
    acc = GaussianAccumulator()
    for b in x.split(7):
        acc.update(b)
    a, b = acc.finalize(), fit_gaussian(x)
    torch.testing.assert_close(a.cov, b.cov)
    torch.testing.assert_close(a.mean, b.mean)


def test_many_positions_on_two_threads_no_lu_path():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(10, 64, 20, generator=torch.Generator().manual_seed(2))
        d = mahalanobis(x[:3], fit_gaussian(x))
        assert d.shape == (3, 64) and torch.isfinite(d).all()
    finally:
        torch.set_num_threads(old)


def test_bad_shapes():
    stats = fit_gaussian(torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="do not match"):
        mahalanobis(torch.randn(1, 3, 3), stats)
    with pytest.raises(ValueError, match=r"\[N, P, C\]"):
        fit_gaussian(torch.randn(5, 3))
