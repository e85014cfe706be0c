import pytest
import torch
from fsiad.fewshot.methods import AnomalyMethod, MethodConfig, create_method
from fsiad.fewshot.ops.gaussian import fit_gaussian, mahalanobis

from tests.memory_helpers import aurocs, require_weights, synthetic


def _tiny(**opts):
    return create_method("padim", MethodConfig(encoder="resnet18", image_size=64, allow_random=True,
                                               options={"n_features": 20, **opts}))


def test_seeded_channel_subset_and_mahalanobis_map(tmp_path):
    m = _tiny()
    assert m.layers == ["layer1", "layer2", "layer3"]
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m.fit(x[:4])
    assert m.channels.numel() == 20 and torch.equal(m.channels, _tiny().fit(x[:4]).channels)
    assert not torch.equal(m.channels, _tiny(seed=1).fit(x[:4]).channels)
    f_train, f_test = m.features(x[:4]), m.features(x[4:])
    ref = mahalanobis(f_test, fit_gaussian(f_train, 0.01)).reshape(2, 16, 16)
    r = m.predict(x[4:])
    assert r.anomaly_maps.shape == (2, 64, 64)
    assert torch.allclose(r.anomaly_maps.mean((1, 2)), ref.mean((1, 2)), rtol=0.05)
    m.save(tmp_path / "p")
    again = AnomalyMethod.load(tmp_path / "p").predict(x[4:])
    assert torch.equal(again.anomaly_maps, r.anomaly_maps)
    with pytest.raises(ValueError, match="at least 2"):
        m.fit(x[:1])


@pytest.mark.needs_weights
def test_ranks_and_localises_synthetic_defects_with_real_effnet():
    require_weights("tf_efficientnet_lite0")
    m = create_method("padim", MethodConfig(image_size=128, batch_size=16))
    train, test, labels, masks = synthetic(m, "object", 128, n_train=16, n_good=4, n_defect=4)
    m.fit(train)
    img, pix = aurocs(m.predict(test), labels, masks)
    assert img >= 0.9 and pix >= 0.85, (img, pix)
