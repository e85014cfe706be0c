"""Registry: creation, unavailable encoders, random init, explicit weights, feature cache, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fsiad.fewshot.encoders import WeightsNotFoundError, create_encoder, encoder_names, encoder_status

from tests.encoders_helpers import fsiad_home_fixture  # noqa: F401


def test_names_and_unknown_encoder() -> None:
    names = encoder_names()
    for n in ("dinov2_vits14", "dinov2_vitb14", "tf_efficientnet_lite0", "wide_resnet50_2", "resnet18", "mae_vitb16"):
        assert n in names
    with pytest.raises(ValueError, match="unknown encoder 'nope'; known encoders: .*dinov2_vits14"):
        create_encoder("nope")


@pytest.mark.parametrize("name", ["wide_resnet50_2", "mae_vitb16", "dinov2_vitb14"])
def test_unavailable_encoder_fails_fast_with_resolver_message(name: str, fsiad_home: Path) -> None:
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as exc:
        create_encoder(name)
    assert time.perf_counter() - t0 < 5.0  # no network, no retries
    msg = str(exc.value)
    assert f"no weights for encoder '{name}'" in msg
    assert str(fsiad_home / "weights") in msg and "weights=PATH" in msg and "hf:" in msg
    status = encoder_status(name)
    assert status["available"] is False and status["howto"] == msg.replace("offline, hub skipped", "not found here")


def test_random_init_is_explicit_and_deterministic(fsiad_home: Path) -> None:
    a = create_encoder("resnet18", allow_random=True)
    torch.manual_seed(123)  # the global RNG state must not matter, nor be consumed
    state = torch.get_rng_state()
    b = create_encoder("resnet18", allow_random=True)
    assert torch.equal(state, torch.get_rng_state())
    assert a.weights.source == "random" and a.weights.path is None and a.weights.checksum == "random-init-seed0"
    x = torch.rand(1, 3, 64, 64)
    for fa, fb in zip(a.patch_features(x), b.patch_features(x), strict=True):
        torch.testing.assert_close(fa, fb, rtol=0, atol=0)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_explicit_path_beats_cache_and_checksum_recorded(fsiad_home: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    sd_cache = create_encoder("resnet18", allow_random=True).model.state_dict()
    (fsiad_home / "weights").mkdir(parents=True)
    torch.save(sd_cache, fsiad_home / "weights" / "resnet18.pth")
    explicit = tmp_path / "mine.pth"
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in sd_cache.items()}, explicit)
    cached = create_encoder("resnet18")
    assert cached.weights.source == "cache"
    assert encoder_status("resnet18")["checksum"] == cached.weights.checksum
    mine = create_encoder("resnet18", weights=explicit)
    assert (mine.weights.source, mine.weights.path) == ("file", str(explicit))
    assert len(mine.weights.checksum) == 64 and mine.weights.checksum != cached.weights.checksum
    torch.testing.assert_close(mine.model.conv1.weight, sd_cache["conv1.weight"] + 1)
    assert mine.describe()["weights_checksum"] == mine.weights.checksum


def test_bad_weight_file_names_the_file(fsiad_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth: cannot read weights"):
        create_encoder("resnet18", weights=bad)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match=r"wrong.pth: weights do not fit .*missing keys"):
        create_encoder("resnet18", weights=wrong)


class _Counting:
    def __init__(self, enc) -> None:
        self.calls, self.images = 0, 0
        self.inner = enc._patch_features

    def __call__(self, images, layers):
        self.calls += 1
        self.images += images.shape[0]
        return self.inner(images, layers)


def test_feature_cache_identical_and_encodes_each_image_once(fsiad_home: Path) -> None:
    enc = create_encoder("dinov2_vits14", allow_random=True, image_size=56)
    x = torch.rand(3, 3, 56, 56)
    reference = enc.patch_features(x, [11, 5])
    enc.enable_cache()
    counter = _Counting(enc)
    enc._patch_features = counter
    first = enc.patch_features(x, [11, 5])
    again = enc.patch_features(x[[2, 0]], [11, 5])  # subset, reordered: all cached
    mixed = enc.patch_features(torch.cat([x[1:2], torch.rand(1, 3, 56, 56)]), [11, 5])
    assert counter.images == 4 and counter.calls == 2  # 3 images, then only the new one
    for r, f in zip(reference, first, strict=True):
        torch.testing.assert_close(f, r, rtol=0, atol=0)
    torch.testing.assert_close(again[0], reference[0][[2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(mixed[1][0], reference[1][1], rtol=0, atol=0)
    enc.patch_features(x, [11])  # different layer set -> new cache entries
    assert counter.images == 7


def test_models_cli_lists_every_encoder(fsiad_home: Path) -> None:
    from fsiad.cli.main import app

    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines() if line and not line.startswith(" ")}
    for name in encoder_names():
        assert name in lines
    assert lines["wide_resnet50_2"].split()[1] == "no" and lines["mae_vitb16"].split()[1] == "no"
    assert "- wide_resnet50_2:" in res.output and "- mae_vitb16:" in res.output
    res = CliRunner().invoke(app, ["models", "resnet18", "--json"])
    rows = json.loads(res.output)["encoders"]
    assert [r["name"] for r in rows] == ["resnet18"] and rows[0]["available"] is False
    res = CliRunner().invoke(app, ["models", "bogus"])
    assert res.exit_code != 0 and "unknown encoder 'bogus'" in res.output


@pytest.mark.needs_weights
def test_models_cli_shows_packaged_encoders_available(fsiad_home: Path) -> None:
    from fsiad.cli.main import app

    res = CliRunner().invoke(app, ["models", "dinov2_vits14", "tf_efficientnet_lite0", "--paths"])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines() if line.startswith(("dinov2", "tf_eff"))]
    assert [r[1:3] for r in rows] == [["yes", "package"], ["yes", "package"]], res.output
    assert all(len(r[3]) == 12 for r in rows)
