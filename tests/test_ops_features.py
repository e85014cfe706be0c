import pytest
import torch
from fsiad.fewshot.ops.features import fuse_layers, parse_layers


def test_fuse_layers_upsamples_aggregates_and_normalises():
    a, b = torch.randn(2, 8, 8, 3), torch.randn(2, 4, 4, 5)
    out = fuse_layers([a, b])
    assert out.shape == (2, 8, 8, 8)
    assert torch.equal(out[..., :3], a)
    nb = fuse_layers([a, b], normalize=True)
    torch.testing.assert_close(nb.norm(dim=-1), torch.ones(2, 8, 8))  # unit norm overall
    torch.testing.assert_close(nb[..., :3].norm(dim=-1), torch.full((2, 8, 8), 0.5 ** 0.5))  # equal layer weight
    r3 = fuse_layers([a], r=3)
    torch.testing.assert_close(r3[0, 4, 4], a[0, 3:6, 3:6].reshape(-1, 3).mean(0))
    with pytest.raises(ValueError, match="no layers"):
        fuse_layers([])


def test_parse_layers():
    assert parse_layers(None) is None
    assert parse_layers("5,8") == [5, 8]
    assert parse_layers([5, "raw8"]) == [5, "raw8"]
    assert parse_layers("blocks.2,blocks.4") == ["blocks.2", "blocks.4"]
    assert parse_layers(11) == [11]
