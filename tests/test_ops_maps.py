import pytest
import scipy.ndimage
import torch
from fsiad.fewshot.ops import local_aggregate, topk_mean, upsample_blur
from fsiad.fewshot.ops.smoothing import gaussian_blur, gaussian_kernel1d


def test_local_aggregate_is_mean_of_valid_neighbours():
    f = torch.randn(2, 5, 6, 3, generator=torch.Generator().manual_seed(0))
    assert local_aggregate(f, 1) is f
    out = local_aggregate(f, 3)
    assert out.shape == f.shape
    torch.testing.assert_close(out[1, 2, 3], f[1, 1:4, 2:5].reshape(-1, 3).mean(0))
    torch.testing.assert_close(out[0, 0, 0], f[0, :2, :2].reshape(-1, 3).mean(0))  # border: valid only
    const = torch.ones(1, 4, 4, 2)
    torch.testing.assert_close(local_aggregate(const, 5), const)
    with pytest.raises(ValueError, match="odd"):
        local_aggregate(f, 2)


def test_upsample_blur_shapes_and_mass():
    maps = torch.zeros(2, 8, 8)
    maps[0, 4, 4] = 1.0
    out = upsample_blur(maps, 64, sigma=4.0)
    assert out.shape == (2, 64, 64)
    assert torch.count_nonzero(out[1]) == 0
    peak = divmod(int(out[0].argmax()), 64)
    assert abs(peak[0] - 36) <= 1 and abs(peak[1] - 36) <= 1
    assert gaussian_kernel1d(4.0).numel() == 33  # radius 4 sigma
    torch.testing.assert_close(gaussian_blur(torch.ones(1, 40, 40), 4.0), torch.ones(1, 40, 40))
    assert torch.equal(upsample_blur(maps, 8, sigma=0), maps)
    assert upsample_blur(torch.rand(1, 3, 3), 10, sigma=4).shape == (1, 10, 10)  # map smaller than kernel


def test_gaussian_blur_in_chunks_equals_one_pass_and_a_scipy_reference():
    maps = torch.rand(37, 30, 40, generator=torch.Generator().manual_seed(2))
    one = gaussian_blur(maps, 2.0, chunk=1000)
    torch.testing.assert_close(gaussian_blur(maps, 2.0, chunk=5), one)
    ref = scipy.ndimage.gaussian_filter(maps.double().numpy(), sigma=(0, 2.0, 2.0), mode="mirror", truncate=4.0)
    torch.testing.assert_close(one, torch.from_numpy(ref).float(), atol=1e-5, rtol=1e-5)


def test_topk_mean():
    maps = torch.arange(200.0).reshape(2, 10, 10)
    assert topk_mean(maps, 0.01).tolist() == [99.0, 199.0]  # at least one element
    assert topk_mean(maps, 0.05).tolist() == [97.0, 197.0]
    assert topk_mean(maps, 1.0).tolist() == [49.5, 149.5]
    assert topk_mean(maps, 0.0).tolist() == [99.0, 199.0]
    with pytest.raises(ValueError):
        topk_mean(maps, 1.5)
