import pytest
import torch
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.methods import MethodConfig, create_method
from fsiad.fewshot.methods.knn import augment_shots

from tests.memory_helpers import aurocs, require_weights, synthetic


def test_augment_shots_views():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(augment_shots(x, "none"), x)
    r4 = augment_shots(x, "rot4")
    assert r4.shape == (8, 3, 4, 4) and torch.equal(r4[2], torch.rot90(x[0], 1, (1, 2)))
    fl = augment_shots(x, "flips")
    assert fl.shape == (8, 3, 4, 4) and torch.equal(fl[:2], x) and torch.equal(fl[2], x[0].flip(2))
    assert torch.equal(fl[4], x[0].flip(1)) and torch.equal(fl[7], x[1].flip((1, 2)))
    d8 = augment_shots(x, "dihedral8")
    assert d8.shape == (16, 3, 4, 4) and len({tuple(v.flatten().tolist()) for v in d8[::2]}) == 8
    with pytest.raises(ValueError, match="augment"):
        augment_shots(x, "rot7")


def test_random_encoder_contract_and_memory():
    cfg = MethodConfig(encoder="dinov2_vits14", image_size=56, allow_random=True,
                       options={"augment": "rot4", "preset": "mid", "geometry": "square"})
    m = create_method("knn", cfg)
    with pytest.raises(ValueError, match="at least one"):
        m.fit(None)
    x = torch.rand(3, 3, 56, 56)
    m.fit(x[:2])
    assert m.memory.shape == (2 * 4 * 16, 2 * 384)
    r = m.predict(x)
    assert r.anomaly_maps.shape == (3, 56, 56) and r.image_scores.shape == (3,)
    m.fit(x[2:])  # fit replaces the memory
    assert m.memory.shape[0] == 4 * 16
    assert r.image_scores[2] > m.predict(x[2:]).image_scores[0] - 1e-6  # a shot scores ~0 against itself
    assert m.predict(x[2:]).image_scores[0] < 1e-4
    d = m.describe()
    assert d["encoder"]["encoder"] == "dinov2_vits14" and d["layers"] == [5, 8] and d["metric"] == "cosine"
    with pytest.raises(OptionError, match="unknown option"):
        create_method("knn", MethodConfig(allow_random=True, image_size=56, options={"topk": 1}))


@pytest.mark.needs_weights
@pytest.mark.parametrize("kind", ["texture", "object"])
def test_ranks_and_localises_synthetic_defects_with_real_dinov2(kind):
    require_weights("dinov2_vits14")
    m = create_method("knn", MethodConfig(image_size=112, batch_size=16))
    train, test, labels, masks = synthetic(m, kind, 112, n_train=2, n_good=4, n_defect=4)
    m.fit(train)
    img, pix = aurocs(m.predict(test), labels, masks)
    assert img >= 0.9 and pix >= 0.85, (img, pix)
