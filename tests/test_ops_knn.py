import pytest
import torch
from fsiad.fewshot.ops import knn
from fsiad.fewshot.ops.knn import knn_search


def _brute(q, m, k, metric):
    if metric == "l2":
        d = ((q[:, None, :].double() - m[None].double()) ** 2).sum(-1).sqrt()
    else:
        qn = torch.nn.functional.normalize(q.double(), dim=1)
        mn = torch.nn.functional.normalize(m.double(), dim=1)
        d = 1 - qn @ mn.T
    v, i = d.topk(k, dim=1, largest=False)
    return v.float(), i


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("k", [1, 3])
def test_torch_matches_brute_force_across_chunk_boundaries(metric, k):
    g = torch.Generator().manual_seed(0)
    q, m = torch.randn(37, 8, generator=g), torch.randn(53, 8, generator=g) * 2
    ref_d, ref_i = _brute(q, m, k, metric)
    # 40 bytes -> 10-element blocks: many query and memory chunks, uneven last chunks
    for max_bytes in (40, 4 * 7 * 11, 1 << 20):
        d, i = knn_search(q, m, k=k, metric=metric, max_bytes=max_bytes, backend="torch")
        assert d.shape == (37, k) and i.dtype == torch.long
        torch.testing.assert_close(d, ref_d, atol=1e-4, rtol=1e-4)
        assert torch.equal(i, ref_i)


def test_distances_are_euclidean_not_squared_and_cosine_is_one_minus_cos():
    m = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d, i = knn_search(torch.tensor([[6.0, 8.0]]), m, k=2, backend="torch")
    assert d.tolist() == [[5.0, 10.0]] and i.tolist() == [[1, 0]]
    d, _ = knn_search(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0], [-1.0, 0.0]]), k=2, metric="cosine")
    torch.testing.assert_close(d, torch.tensor([[1.0, 2.0]]))


@pytest.mark.skipif(not knn.faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_faiss_backend_matches_torch(metric):
    g = torch.Generator().manual_seed(1)
    q, m = torch.randn(200, 16, generator=g), torch.randn(300, 16, generator=g)
    dt, it = knn_search(q, m, k=4, metric=metric, backend="torch")
    df, if_ = knn_search(q, m, k=4, metric=metric, backend="faiss")
    torch.testing.assert_close(df, dt, atol=1e-4, rtol=1e-4)
    assert (if_ == it).float().mean() > 0.99


def test_auto_backend_switches_to_faiss_on_large_problems(monkeypatch):
    calls = []
    monkeypatch.setattr(knn, "FAISS_MIN_PAIRS", 10)
    monkeypatch.setattr(knn, "_faiss_search", lambda *a: calls.append(a) or knn._torch_search(*a, 1 << 20))
    monkeypatch.setattr(knn, "faiss", object())
    knn_search(torch.randn(5, 3), torch.randn(4, 3))
    assert len(calls) == 1


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(ValueError, match="feature sizes differ"):
        knn_search(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="k=5"):
        knn_search(torch.randn(2, 3), torch.randn(4, 3), k=5)
    with pytest.raises(ValueError, match="metric"):
        knn_search(torch.randn(2, 3), torch.randn(4, 3), metric="l1")
    d, i = knn_search(torch.empty(0, 3), torch.randn(4, 3), k=2)
    assert d.shape == (0, 2) and i.shape == (0, 2)
