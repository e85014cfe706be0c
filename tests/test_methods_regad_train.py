"""RegAD registration network: identity STNs, meta-training, checkpoints, held-out target, CLI errors."""

import json
import math

import pytest
import torch
from fsiad.fewshot.methods import MethodConfig, create_method
from fsiad.fewshot.methods.regad_net import RegistrationNet, compose, identity_theta, invert, warp
from fsiad.fewshot.methods.regad_train import (
    CheckpointError,
    TrainConfig,
    TrainError,
    load_net,
    read_checkpoint,
    save_checkpoint,
    sidecar,
    train_regad,
)

from tests.cli_helpers import assert_one_line_error, run_cli

SIZE = 64  # Lite0 grids 16 / 8 / 4 (strides 4, 8, 16)


def _cfg(out, **kw) -> TrainConfig:
    base = dict(out=str(out), synthetic=2, images_per_category=6, image_size=SIZE, shots=2, epochs=3,
                batch_size=4, lr=0.05, val_fraction=0.0, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("regad") / "reg.safetensors"
    meta = train_regad(_cfg(out), progress=False)
    return out, meta


def test_stn_is_identity_at_initialisation():
    torch.manual_seed(0)
    net = RegistrationNet([5, 7], [(12, 12), (6, 6)]).eval()
    feats = [torch.randn(3, 5, 12, 12), torch.randn(3, 7, 6, 6)]
    reg, thetas = net.register(feats)
    for f, r, t in zip(feats, reg, thetas, strict=True):
        assert torch.equal(t, identity_theta(3))
        assert torch.allclose(r, f, atol=1e-5)
    # affine helpers: inverse and composition
    th = torch.tensor([[[0.9, -0.2, 0.1], [0.3, 1.1, -0.05]]])
    assert torch.allclose(compose(th, invert(th)), identity_theta(1), atol=1e-6)
    assert torch.allclose(warp(feats[0][:1], identity_theta(1)), feats[0][:1], atol=1e-5)


def test_untrained_checkpoint_leaves_regad_features_unchanged(tmp_path):
    cfg = MethodConfig(image_size=SIZE, batch_size=8)
    free = create_method("regad", cfg)
    first = free.encoder.patch_features(torch.rand(1, 3, SIZE, SIZE), free.layers)
    net = RegistrationNet([f.shape[-1] for f in first], [f.shape[1:3] for f in first])
    enc = free.encoder.describe()
    meta = {"encoder": {k: enc[k] for k in ("encoder", "weights_source", "weights_checksum")},
            "layers": free.layers, "channels": net.channels, "grids": [list(g) for g in net.grids],
            "image_size": SIZE, "stn_mode": "rotation_scale", "training": {}, "epochs_done": 0, "curve": []}
    ckpt = tmp_path / "init.safetensors"
    save_checkpoint(ckpt, net, None, meta)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    for frame in ("input", "registered"):
        reg = create_method("regad", MethodConfig(image_size=SIZE, weights=str(ckpt), options={"frame": frame}))
        assert torch.allclose(reg.features(x), free.features(x), atol=1e-4)
        assert reg.describe()["registration"]["sha256"] == json.loads(sidecar(ckpt).read_text())["sha256"]
    assert "training-free" in free.describe()["registration"]


def test_loss_decreases_on_tiny_synthetic_task(trained):
    _, meta = trained
    losses = [row["loss"] for row in meta["curve"]]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.05, losses
    assert meta["training"]["held_out"] == [] and len(meta["training"]["categories"]) == 2
    assert meta["encoder"]["encoder"] == "tf_efficientnet_lite0" and len(meta["encoder"]["weights_checksum"]) == 64


def test_checkpoint_round_trips_bit_exactly(trained, tmp_path):
    out, _ = trained
    meta, tensors, _ = read_checkpoint(out)
    net = load_net(meta, tensors)
    copy = tmp_path / "copy.safetensors"
    save_checkpoint(copy, net, None, meta)
    net2 = load_net(*read_checkpoint(copy)[:2])
    feats = [torch.randn(2, c, *g) for c, g in zip(meta["channels"], meta["grids"], strict=True)]
    with torch.no_grad():
        a, b = net.register(feats), net2.register(feats)
    assert all(torch.equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))
    # the method: two loads of the checkpoint give identical predictions
    g = torch.Generator().manual_seed(3)
    support, query = torch.rand(2, 3, SIZE, SIZE, generator=g), torch.rand(3, 3, SIZE, SIZE, generator=g)
    preds = []
    for _ in range(2):
        m = create_method("regad", MethodConfig(weights=str(out), batch_size=16)).fit(support)
        preds.append(m.predict(query))
    assert torch.equal(preds[0].image_scores, preds[1].image_scores)
    assert torch.equal(preds[0].anomaly_maps, preds[1].anomaly_maps)
    assert m.preprocess.size == SIZE and m.describe()["registration"]["epochs"] == 3


def test_tampered_checkpoint_is_refused(trained, tmp_path):
    out, _ = trained
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(out.read_bytes())
    side = json.loads(sidecar(out).read_text())
    sidecar(bad).write_text(json.dumps({**side, "sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="sha256"):
        read_checkpoint(bad)


def test_target_never_in_training_batches(tmp_path):
    from fsiad.fewshot.data.synthetic import make_mvtec_dataset

    root = make_mvtec_dataset(tmp_path / "data", ("texture_a", "object_b", "texture_c"), image_size=SIZE,
                              n_train=6, n_test_good=1, n_test_defect=1)
    seen: list[str] = []
    meta = train_regad(_cfg(tmp_path / "r.safetensors", root=str(root), exclude=["object_b"], synthetic=2, epochs=1),
                       progress=False, batch_hook=seen.extend)
    assert seen and "object_b" not in seen and "texture_a" in seen and "synthetic/texture_s0" in seen
    assert "object_b" not in meta["training"]["categories"] and meta["training"]["held_out"] == ["object_b"]


def test_resume_continues_an_interrupted_run(tmp_path):
    full = train_regad(_cfg(tmp_path / "full.safetensors", epochs=2), progress=False)

    class Stop(Exception):
        pass

    calls = []

    def interrupt(names):
        calls.append(names)
        if len(calls) > 3:  # 3 batches per epoch: stop inside epoch 2
            raise Stop

    part = tmp_path / "part.safetensors"
    with pytest.raises(Stop):
        train_regad(_cfg(part, epochs=2), progress=False, batch_hook=interrupt)
    assert json.loads(sidecar(part).read_text())["epochs_done"] == 1
    resumed = train_regad(_cfg(part, epochs=2), progress=False, resume=True)
    assert resumed["epochs_done"] == 2
    # same trajectory (CPU kernels may differ in the last bits between runs: compare closely, not bitwise)
    assert [r["loss"] for r in resumed["curve"]] == pytest.approx([r["loss"] for r in full["curve"]], rel=1e-4)
    a, b = read_checkpoint(part)[1], read_checkpoint(tmp_path / "full.safetensors")[1]
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_train_cli_bad_inputs_are_one_line_errors(tmp_path, trained):
    out, _ = trained
    assert_one_line_error(run_cli("train", "regad", "--synthetic", "1", "--out", tmp_path / "x.pt"), ".safetensors")
    assert_one_line_error(run_cli("train", "regad", "--out", tmp_path / "x.safetensors"), "no training categories")
    assert_one_line_error(run_cli("train", "regad", "--synthetic", "1", "--out", out), "--resume")
    assert_one_line_error(run_cli("train", "regad", "--root", tmp_path / "missing", "--out",
                                  tmp_path / "y.safetensors"), "missing")
    assert_one_line_error(run_cli("train", "regad", "--root", tmp_path, "--categories", "a", "--exclude", "a",
                                  "--out", tmp_path / "z.safetensors"), "excluded")
    r = run_cli("train", "regad", "--synthetic", "1", "--epochs", "0", "--out", tmp_path / "w.safetensors")
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_model_folder_with_checkpoint_predicts_like_the_fitted_method(trained, tmp_path):
    """A model folder of regad fitted with --weights CKPT loads with the same CKPT (its own weights
    file is recorded beside the encoder's) and refuses another file."""
    import shutil

    from fsiad.fewshot.workflow.model import ModelError, load_model, save_model
    from fsiad.fewshot.workflow.thresholds import user_threshold

    out, _ = trained
    g = torch.Generator().manual_seed(5)
    support, query = torch.rand(2, 3, SIZE, SIZE, generator=g), torch.rand(2, 3, SIZE, SIZE, generator=g)
    m = create_method("regad", MethodConfig(weights=str(out), batch_size=16)).fit(support)
    before = m.predict(query)
    save_model(m, tmp_path / "model", user_threshold(1.0), {"shots": 2, "seed": 0, "references": []})
    shutil.move(tmp_path / "model", tmp_path / "moved")
    loaded, meta = load_model(tmp_path / "moved", weights=str(out))
    after = loaded.predict(query)
    assert meta["weights_file"]["sha256"] == m.describe()["weights_file"]["sha256"]
    assert torch.equal(before.image_scores, after.image_scores)
    other = tmp_path / "other.safetensors"
    other.write_bytes(out.read_bytes() + b"\0")
    with pytest.raises(ModelError):
        load_model(tmp_path / "moved", weights=str(other))


def test_second_training_into_a_locked_folder_is_refused(tmp_path):
    from fsiad.fewshot.fileio import OutputLock, OutputLockedError

    with OutputLock(tmp_path, "another training"), pytest.raises(OutputLockedError, match="another training"):
        train_regad(_cfg(tmp_path / "reg.safetensors"), progress=False)


# -- the paper's STN-encoder (--tune-encoder) ------------------------------------------------------
@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    out = tmp_path_factory.mktemp("regad_cascade") / "casc.safetensors"
    meta = train_regad(_cfg(out, tune_encoder=True, encoder_lr=0.01), progress=False)
    return out, meta


def test_cascade_is_the_encoder_at_initialisation():
    """Identity STNs: the cascade's layer outputs equal the encoder's own stage features, and
    building it leaves the shared encoder untouched (it works on copies of the stages)."""
    from fsiad.fewshot.methods.regad_net import CascadeRegistration
    from fsiad.fewshot.methods.regad_train import cascade_stages

    free = create_method("regad", MethodConfig(image_size=SIZE, batch_size=8))
    enc = free.encoder
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    want = enc.patch_features(x, free.layers)
    stages = cascade_stages(enc, free.layers)
    net = CascadeRegistration(stages, free.layers, [f.shape[-1] for f in want], [f.shape[1:3] for f in want],
                              "rotation", trainable_from=1).eval()
    with torch.no_grad():
        reg, thetas = net.register(net.prefix(enc.stem(x)))
    for f, r, t in zip(want, reg, thetas, strict=True):
        assert torch.equal(t, identity_theta(2))
        assert torch.allclose(r.permute(0, 2, 3, 1), f, atol=1e-4)
    assert all(p.requires_grad == (i >= 1) for i, m in enumerate(net.stages) for p in m.parameters())
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert all(a is not b for a, b in zip(net.stages, [m for _, m in enc.stage_modules()], strict=False))


def test_cascade_training_fine_tunes_only_the_trained_stages(cascade):
    from fsiad.fewshot.encoders.registry import encoder_from_config

    out, meta = cascade
    losses = [row["loss"] for row in meta["curve"]]
    assert losses[-1] < losses[0] - 0.05, losses
    assert meta["cascade"] == {"trainable_from": 1, "stages": ["blocks.0", "blocks.1", "blocks.2", "blocks.3",
                                                                 "blocks.4"]}
    assert meta["training"]["config"]["tune_encoder"] is True
    tensors = read_checkpoint(out)[1]
    enc = encoder_from_config(MethodConfig(image_size=SIZE), "tf_efficientnet_lite0", SIZE)
    own = dict(enc.model.blocks.named_parameters())
    frozen = [k for k in tensors if k.startswith("net.stages.0.") and k.endswith("weight")]
    tuned = [k for k in tensors if k.startswith("net.stages.2.") and k.endswith("weight")]
    assert frozen and tuned
    assert all(torch.equal(tensors[k], own[k.removeprefix("net.stages.")]) for k in frozen)
    assert any(not torch.equal(tensors[k], own[k.removeprefix("net.stages.")]) for k in tuned)


def test_cascade_checkpoint_round_trips_and_predicts(cascade, tmp_path):
    out, _ = cascade
    meta, tensors, _ = read_checkpoint(out)
    m = create_method("regad", MethodConfig(weights=str(out), batch_size=16))
    net = m.net
    copy = tmp_path / "copy.safetensors"
    save_checkpoint(copy, net, None, meta)
    assert read_checkpoint(copy)[1].keys() == {k for k in tensors if k.startswith("net.")}
    assert all(torch.equal(read_checkpoint(copy)[1][k], tensors[k]) for k in read_checkpoint(copy)[1])
    g = torch.Generator().manual_seed(3)
    support, query = torch.rand(2, 3, SIZE, SIZE, generator=g), torch.rand(3, 3, SIZE, SIZE, generator=g)
    preds = []
    for frame in ("registered", "registered", "input"):
        mm = create_method("regad", MethodConfig(weights=str(copy), batch_size=16, options={"frame": frame}))
        preds.append(mm.fit(support).predict(query))
        assert mm.describe()["registration"]["encoder_fine_tuned"] is True
    assert torch.equal(preds[0].anomaly_maps, preds[1].anomaly_maps)
    assert preds[2].anomaly_maps.shape == preds[0].anomaly_maps.shape
    assert torch.isfinite(preds[2].anomaly_maps).all() and not torch.equal(preds[2].anomaly_maps, preds[0].anomaly_maps)


def test_tune_encoder_needs_a_cnn_encoder(tmp_path):
    r = run_cli("train", "regad", "--synthetic", "1", "--tune-encoder", "--encoder", "clip_vitb16plus_240",
                "--allow-random", "--image-size", "240", "--images-per-category", "3", "--shots", "1",
                "--out", tmp_path / "v.safetensors")
    assert_one_line_error(r, "--tune-encoder needs a CNN encoder")


def test_pose_exposure_augmentation_is_seeded_and_keeps_flat_images_flat():
    from fsiad.fewshot.methods.regad_train import augment_pose_exposure

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = augment_pose_exposure(x, torch.Generator().manual_seed(5))
    b = augment_pose_exposure(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert not torch.allclose(a, x, atol=1e-2)
    flat = torch.full((6, 3, 16, 16), 0.5)
    y = augment_pose_exposure(flat, torch.Generator().manual_seed(1))  # pose changes nothing on a flat image
    per_image = y.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert ((per_image[:, 0] >= 0.5 * 0.7 - 0.1 - 1e-6) & (per_image[:, 0] <= 0.5 * 1.3 + 0.1 + 1e-6)).all()
    assert per_image[:, 0].std() > 0.01  # each image its own exposure


def test_augmented_pairs_train_the_cascade(tmp_path):
    meta = train_regad(_cfg(tmp_path / "aug.safetensors", tune_encoder=True, augment_pairs=True, epochs=2,
                            val_fraction=0.2), progress=False)
    assert meta["training"]["config"]["augment_pairs"] is True and len(meta["curve"]) == 2
    assert all(torch.isfinite(torch.tensor([r["loss"], r["val_loss"]])).all() for r in meta["curve"])
    m = create_method("regad", MethodConfig(weights=str(tmp_path / "aug.safetensors"), batch_size=16))
    g = torch.Generator().manual_seed(4)
    r = m.fit(torch.rand(2, 3, SIZE, SIZE, generator=g)).predict(torch.rand(2, 3, SIZE, SIZE, generator=g))
    assert torch.isfinite(r.anomaly_maps).all()


def test_feature_pose_is_one_seeded_transform_per_image_at_every_stage():
    from fsiad.fewshot.methods.regad_net import warp
    from fsiad.fewshot.methods.regad_train import augment_feature_pose, random_pose

    g = torch.Generator().manual_seed(0)
    fine = torch.rand(3, 5, 16, 16, generator=g)
    coarse = torch.nn.functional.avg_pool2d(fine, 2)
    a = augment_feature_pose([fine, coarse], torch.Generator().manual_seed(7))
    b = augment_feature_pose([fine, coarse], torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    theta = random_pose(3, torch.Generator().manual_seed(7))  # the same draw, applied by hand
    assert torch.allclose(a[0], warp(fine, theta)) and torch.allclose(a[1], warp(coarse, theta))
    turns = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    assert turns.abs().max() <= math.radians(30) and turns.std() > 0.01  # each image its own pose
    assert not torch.allclose(a[0], fine, atol=1e-2)
    flat = [torch.full((2, 4, 8, 8), 0.25)]
    assert torch.allclose(augment_feature_pose(flat, g)[0], flat[0])  # reflection padding: nothing enters


def test_augmented_pairs_train_the_frozen_variant(tmp_path):
    """Frozen encoder: the poses warp the cached features (every training step), not validation."""
    plain = train_regad(_cfg(tmp_path / "p.safetensors", epochs=2, val_fraction=0.2), progress=False)
    meta = train_regad(_cfg(tmp_path / "a.safetensors", epochs=2, val_fraction=0.2, augment_pairs=True),
                       progress=False)
    assert meta["training"]["config"]["augment_pairs"] is True and "augment_pairs" not in plain["training"]["config"]
    assert "tune_encoder" not in meta["training"]["config"]
    assert [r["loss"] for r in meta["curve"]] != [r["loss"] for r in plain["curve"]]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["val_loss"]) for r in meta["curve"])
    r = run_cli("train", "regad", "--synthetic", "2", "--images-per-category", "6", "--image-size", str(SIZE),
                "--shots", "2", "--epochs", "1", "--batch-size", "4", "--augment-pairs", "-q",
                "--out", tmp_path / "cli.safetensors")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cli.json").read_text())["training"]["config"]["augment_pairs"] is True


def test_mean_transform_penalty_ignores_per_image_spread_and_charges_a_common_turn():
    from fsiad.fewshot.methods.regad_net import mean_transform_penalty, registration_loss, theta_from_params

    shifts = theta_from_params(torch.tensor([[0.2, -0.1], [-0.2, 0.1]]), "translation")  # average: identity
    assert float(mean_transform_penalty([shifts, identity_theta(3)])) == pytest.approx(0.0, abs=1e-12)
    a = 0.3
    turn = theta_from_params(torch.full((4, 1), a), "rotation")
    assert float(mean_transform_penalty([turn])) == pytest.approx(4 * (1 - math.cos(a)), rel=1e-6)
    # the loss with the prior = the paper's loss + prior x the penalty of query and support transforms
    torch.manual_seed(0)
    net = RegistrationNet([5, 7], [(12, 12), (6, 6)], "rotation").eval()
    q = [torch.randn(2, 5, 12, 12), torch.randn(2, 7, 6, 6)]
    s = [torch.randn(4, 5, 12, 12), torch.randn(4, 7, 6, 6)]
    with torch.no_grad():
        net.stn[1].fc[2].bias.fill_(a)  # every image turned by a at stage 2
        rq, rs = net.register(q), net.register(s)
        plain = registration_loss(net, rq, rs, 2)
        assert float(net.loss(q, s, 2, prior=0.5)) == pytest.approx(
            float(plain + 0.5 * (mean_transform_penalty(rq[1]) + mean_transform_penalty(rs[1]))), rel=1e-6)
        assert float(net.loss(q, s, 2, prior=0.5)) > float(net.loss(q, s, 2)) + 0.5 * 2 * 4 * (1 - math.cos(a)) * 0.99


def test_identity_prior_is_recorded_and_divergence_is_a_one_line_error(tmp_path):
    meta = train_regad(_cfg(tmp_path / "p.safetensors", identity_prior=0.05, epochs=1), progress=False)
    assert meta["training"]["config"]["identity_prior"] == 0.05
    with pytest.raises(TrainError, match="diverged"):
        train_regad(_cfg(tmp_path / "d.safetensors", lr=1e12, epochs=2), progress=False)
