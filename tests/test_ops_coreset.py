import pytest
import torch
from fsiad.fewshot.ops.coreset import _greedy, approximate_greedy_coreset, project


def _plain_greedy(x, starts, n):
    sel = list(starts.tolist())
    mind = torch.cdist(x, x[starts]).min(1).values
    while len(sel) < n:
        p = int(mind.argmax())
        sel.append(p)
        mind = torch.minimum(mind, (x - x[p]).norm(dim=1))
    return torch.tensor(sel)


@pytest.mark.parametrize("pool", [1, 7, 64, 4096])
def test_lazy_greedy_selects_exactly_what_plain_greedy_selects(pool):
    g = torch.Generator().manual_seed(0)
    # clustered data, so that the pool runs dry at different speeds
    x = torch.cat([torch.randn(300, 6, generator=g) * 0.2 + torch.randn(1, 6, generator=g) * 5 for _ in range(5)])
    x = x.double()  # no float32 rounding ties between the two distance formulas
    starts = torch.tensor([3, 700])
    assert torch.equal(_greedy(x, starts, 120, pool=pool, chunk=257), _plain_greedy(x, starts, 120))


def test_start_points_are_in_the_coreset_and_indices_distinct():
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(1))
    idx = approximate_greedy_coreset(x, ratio=0.1, num_starts=10, seed=3)
    assert idx.shape == (50,) and idx.unique().numel() == 50
    starts = torch.randperm(500, generator=torch.Generator().manual_seed(3))[:10]
    assert torch.equal(idx[:10], starts)  # anomalib #3459: the start point must be counted
    assert torch.equal(idx, approximate_greedy_coreset(x, ratio=0.1, num_starts=10, seed=3))


def test_coreset_covers_better_than_random_subset():
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(950, 8, generator=g), torch.randn(50, 8, generator=g) + 12])  # rare mode
    idx = approximate_greedy_coreset(x, n=30, proj_dim=0, num_starts=1)
    rnd = torch.randperm(1000, generator=g)[:30]
    cover = torch.cdist(x, x[idx]).min(1).values.max()
    cover_rnd = torch.cdist(x, x[rnd]).min(1).values.max()
    assert cover < cover_rnd
    assert (idx >= 950).any()  # the rare mode is represented


def test_projection_preserves_distances_roughly():
    x = torch.randn(200, 1024, generator=torch.Generator().manual_seed(4))
    p = project(x, 128, seed=0)
    assert p.shape == (200, 128)
    ratio = torch.pdist(p) / torch.pdist(x)
    assert 0.7 < ratio.min() and ratio.max() < 1.3


def test_duplicates_and_edge_cases():
    x = torch.zeros(20, 4)
    x[:2] = torch.tensor([[1.0, 0, 0, 0], [2.0, 0, 0, 0]])
    idx = approximate_greedy_coreset(x, n=8, num_starts=1)
    assert idx.unique().numel() == 8
    assert torch.equal(approximate_greedy_coreset(x, ratio=1.0), torch.arange(20))
    with pytest.raises(ValueError, match="exactly one"):
        approximate_greedy_coreset(x)
    with pytest.raises(ValueError, match="ratio"):
        approximate_greedy_coreset(x, ratio=0.0)


def test_blocked_min_update_equals_the_direct_distances():
    from fsiad.fewshot.ops.coreset import _update_min

    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1000, 16, generator=g).double(), torch.randn(37, 16, generator=g).double()
    prior = torch.rand(1000, generator=g).double() * 40
    want = torch.minimum(prior, torch.cdist(x, c).pow(2).min(1).values)
    for block_elems in (37 * 64, 1 << 22):  # many row blocks (reused buffer), then one
        mind = prior.clone()
        _update_min(x, (x * x).sum(1), c, mind, chunk=300, block_elems=block_elems)
        torch.testing.assert_close(mind, want, atol=1e-9, rtol=1e-9)
