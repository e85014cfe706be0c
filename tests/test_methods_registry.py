"""Typed method options, the plugin catalogue (methods, encoders, datasets) and RGB-D sample collection."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from fsiad.fewshot import registry
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.methods import AnomalyMethod, MethodConfig, create_method, method_class, method_names
from fsiad.fewshot.methods.base import UnknownMethodError
from fsiad.fewshot.methods.options import Option, resolve
from fsiad.fewshot.preprocess import Preprocess
from fsiad.fewshot.result import AnomalyResult
from fsiad.pointcloud.synthetic import generate_mvtec3d

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.workflow_helpers import write_images

ROOT = Path(__file__).resolve().parents[1]


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                               "HOME": str(Path.home())})


# -- Option: coercion and messages ------------------------------------------------------------
def test_option_coerces_cli_strings_from_the_declared_type():
    decl = (Option("k", "int", 1, ge=1), Option("f", "float", 0.5, gt=0, le=1), Option("b", "bool", True),
            Option("layers", "layers", None, nullable=True), Option("r", "ints", (1, 3)),
            Option("mode", "str", "a", choices=("a", "b")), Option("w", "dict", None, nullable=True, item="float"))
    got = resolve(decl, {"k": "3", "f": "1", "b": "false", "layers": "5,8", "r": "[2, 4]", "mode": "b",
                         "w": '{"rgb": 2}'})
    assert got == {"k": 3, "f": 1.0, "b": False, "layers": [5, 8], "r": (2, 4), "mode": "b", "w": {"rgb": 2.0}}
    assert resolve(decl, {"layers": [11]})["layers"] == [11]
    assert resolve(decl, {"layers": "blocks.2,blocks.4"})["layers"] == ["blocks.2", "blocks.4"]
    assert resolve(decl, {"layers": "none", "k": 2.0, "r": 5})["layers"] is None
    assert resolve(decl, {})["r"] == (1, 3)  # defaults filled in
    for key, bad, needle in [("k", "abc", "-o k=abc: expected an integer >= 1"), ("k", 0, "-o k=0"),
                             ("k", 2.5, "-o k=2.5"), ("k", True, "-o k=true"), ("f", 0, "> 0, <= 1"),
                             ("b", "maybe", "true or false"), ("mode", "c", "one of: a, b"),
                             ("r", "1,x", "list of integers"), ("w", "[1]", "JSON object"),
                             ("mode", "none", "-o mode=none")]:
        with pytest.raises(OptionError, match=None) as err:
            resolve(decl, {key: bad}, "demo")
        assert needle in str(err.value) and "'demo'" in str(err.value), str(err.value)
    with pytest.raises(OptionError, match=r"^-o nope: unknown option for method 'demo'; known options: b, f, k"):
        resolve(decl, {"nope": 1}, "demo")


def test_every_method_declares_typed_options_with_valid_defaults():
    for name in ("knn", "patchcore", "padim", "musc", "winclip", "maeday", "regad", "color_gaussian",
                 "btf", "fpfh", "rgb", "depth"):
        cls = method_class(name)
        assert cls.options, name
        for o in cls.options:
            assert o.help, (name, o.name)
            assert o.coerce(o.default, name) == o.default, (name, o.name)  # the default passes its own check


def test_defaults_are_unchanged():
    from fsiad.fewshot.methods import knn, musc, patchcore, winclip
    from fsiad.pointcloud import methods as pc

    assert knn.DEFAULTS == {"preset": "auto", "geometry": "native", "layers": None, "augment": "flips",
                            "top_fraction": 0.01, "sigma": 4.0, "metric": None, "k": 1, "r": 1,
                            "min_defect_px": 8.0, "max_side": 448, "global_term": "auto", "align": "auto",
                            "position": "off", "seed": 0, "budget": 32}
    assert patchcore.DEFAULTS["coreset_ratio"] == 0.1 and patchcore.DEFAULTS["reweight_b"] == 9
    assert musc.DEFAULTS["r_list"] == (1, 3, 5) and musc.DEFAULTS["subset_size"] == 200
    assert winclip.DEFAULTS["scales"] == (2, 3) and winclip.DEFAULTS["multi_crop"] is True
    assert pc.DEFAULTS["fusion_norm"] == "nn" and pc.DEFAULTS["coreset_above"] == 16 and len(pc.DEFAULTS) == 19
    assert pc.DEFAULTS["fpfh_max_points"] == 8000 and pc.DEFAULTS["fpfh_cache"] is False


def test_library_validation_2d_and_3d_and_color_gaussian_rejects_unknown_keys():
    with pytest.raises(OptionError, match=r"-o foo: unknown option for method 'color_gaussian'; known options: eps"):
        create_method("color_gaussian", MethodConfig(options={"foo": 1}))
    m = create_method("color_gaussian", MethodConfig(image_size=32, options={"sigma": "2"}))
    assert m.sigma == 2.0 and m.eps == 1e-4
    with pytest.raises(OptionError, match=r"-o k=abc: expected an integer >= 1 for method 'fpfh'"):
        create_method("fpfh", MethodConfig(options={"k": "abc"}))
    with pytest.raises(OptionError, match=r"-o weights=\[1\]"):
        create_method("fpfh", MethodConfig(options={"weights": [1]}))
    knn = create_method("knn", MethodConfig(allow_random=True, image_size=56, options={"layers": "5,8", "k": "2"}))
    assert knn.layers == [5, 8] and knn.opts["k"] == 2


# -- the CLI: fsiad methods, -o errors -----------------------------------------------------------
def test_methods_knn_lists_options_with_types_and_defaults():
    r = run_cli("methods", "knn")
    assert r.exit_code == 0, r.output
    assert "knn (default method)" in r.stdout and "regime:   few-shot" in r.stdout
    assert "encoder:  dinov2_vits14" in r.stdout and "weights:" in r.stdout
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[8:] if line.startswith("  ")}
    assert rows["augment"].split()[1:3] == ["str", "flips"] and "one of: none, flips, rot4, dihedral8" in rows["augment"]
    assert rows["k"].split()[1:3] == ["int", "1"] and ">= 1" in rows["k"]
    assert rows["top_fraction"].split()[1:3] == ["float", "0.01"]
    assert rows["layers"].split()[1] == "list[int|str]" and "none" in rows["layers"]
    assert set(rows) == {"preset", "geometry", "layers", "augment", "top_fraction", "sigma", "metric", "k", "r",
                         "min_defect_px", "max_side", "global_term", "align", "position", "seed", "budget"}
    assert rows["position"].split()[1:3] == ["str", "off"] and "one of: off, on" in rows["position"]
    assert rows["align"].split()[1:3] == ["str", "auto"] and "one of: auto, on, off" in rows["align"]
    assert "  option  " in r.stdout and "default" in r.stdout and "help" in r.stdout
    r = run_cli("methods", "btf")
    assert "fusion_norm" in r.stdout and "one of: std, nn, nnmean, none" in r.stdout
    assert_one_line_error(run_cli("methods", "nope"), "unknown method 'nope'", "knn")


def test_methods_list_imports_no_torch_and_marks_the_default():
    p = _fresh_python(
        "import sys\n"
        "from tests.cli_helpers import run_cli\n"
        "r = run_cli('methods')\n"
        "light = ('fsiad.fewshot.methods.describe',)  # the listing itself: catalogue only\n"
        "print(r.exit_code, 'torch' in sys.modules,\n"
        "      any(m.startswith('fsiad.fewshot.methods.') and m not in light for m in sys.modules))\n"
        "print(r.stdout)\n")
    assert p.returncode == 0, p.stderr
    first, *lines = p.stdout.splitlines()
    assert first == "0 False False", p.stdout
    marked = [ln for ln in lines if ln.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1] == "knn", p.stdout
    names = {ln[2:].split()[0] for ln in lines if ln[:2] in ("* ", "  ") and ln.strip()}
    assert {"knn", "btf", "fpfh", "rgb", "depth", "musc", "winclip", "color_gaussian"} <= names


def test_methods_weights_flag_marks_missing_encoder_weights(monkeypatch):
    import fsiad.fewshot.encoders as enc

    monkeypatch.setattr(enc, "encoder_status", lambda name: {"available": name == "tf_efficientnet_lite0"})
    r = run_cli("methods", "--weights")
    assert r.exit_code == 0, r.output
    line = {ln[2:].split()[0]: ln for ln in r.stdout.splitlines() if ln[:2] in ("* ", "  ") and ln.strip()}
    assert "needs weights: dinov2_vits14" in line["knn"]
    assert "ready (tf_efficientnet_lite0)" in line["patchcore"] and "ready (tf_efficientnet_lite0)" in line["btf"]
    assert "no encoder weights needed" in line["fpfh"] and "no encoder weights needed" in line["color_gaussian"]


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("opts")
    write_images(root / "normal", 2, defect=False, seed=0)
    write_images(root / "targets", 1, defect=True, seed=1)
    return {"normal": root / "normal", "targets": root / "targets", "root": root}


@pytest.mark.parametrize(("opt", "needles"), [
    ("foo=1", ["-o foo", "unknown option", "'knn'", "augment, budget, geometry, global_term, k, layers"]),
    ("k=abc", ["-o k=abc", "integer"]),
    ("augment=spin", ["-o augment=spin", "one of: none, flips, rot4, dihedral8"]),
])
def test_score_rejects_bad_knn_options_in_one_line(image_tree, opt, needles):
    r = run_cli("score", "--method", "knn", "-o", opt, "--shots", 1, "--normal", image_tree["normal"],
                "--out", image_tree["root"] / "out", "--allow-random", image_tree["targets"])
    assert_one_line_error(r, *needles)


@pytest.fixture(scope="module")
def mvtec3d_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mvtec3d_reg")
    return generate_mvtec3d(root, n_train=3, n_validation=0, n_test_good=2, n_test_defect={"dent": 2, "color": 1},
                            size=48, seed=3)


@pytest.mark.parametrize(("opt", "needles"), [
    ("nope=1", ["-o nope", "unknown option", "'fpfh'", "fusion_norm"]),
    ("k=abc", ["-o k=abc", "integer"]),
    ("fusion_norm=l2", ["-o fusion_norm=l2", "one of: std, nn, nnmean, none"]),
])
def test_score_rejects_bad_3d_options_in_one_line(mvtec3d_root, tmp_path, opt, needles):
    cat = mvtec3d_root / "dome"
    r = run_cli("score", "--method", "fpfh", "-o", opt, "--shots", 1, "--normal", cat / "train" / "good",
                "--out", tmp_path / "out", cat / "test")
    assert_one_line_error(r, *needles)


# -- the catalogue ----------------------------------------------------------------------------------
def test_method_class_btf_in_a_fresh_interpreter_without_importing_pointcloud():
    p = _fresh_python(
        "import sys\n"
        "from fsiad.fewshot.methods import method_class, method_names\n"
        "assert 'btf' in method_names()\n"
        "assert not any(m.startswith('fsiad.pointcloud') for m in sys.modules)\n"
        "cls = method_class('btf')\n"
        "print(cls.__module__, cls.__name__, cls.name, cls.modalities)\n"
        "print('fsiad.fewshot.methods.knn' in sys.modules)\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["fsiad.pointcloud.methods BTF btf ('rgb', 'fpfh')", "False"]


def test_catalogue_matches_the_method_classes():
    from fsiad.fewshot.methods.base import _REGISTRY

    entries = registry.entries("method")
    assert registry.DEFAULT_METHOD in entries
    for name, e in entries.items():
        cls = method_class(name)
        assert cls.name == name and _REGISTRY[name] is cls
        regime = "zero-shot-transductive" if cls.transductive else cls.regime
        assert e.regime == regime, name
        assert (cls.__doc__ or "").strip().splitlines()[0] == e.summary or name == "winclip", name
        mod = importlib.import_module(cls.__module__)
        default = getattr(mod, "DEFAULT_ENCODER", None)
        if default is not None:
            assert e.encoders == (default,), name
        if name in ("btf", "rgb", "depth"):
            assert e.encoders == mod.PREFERRED_ENCODERS
        if name in ("fpfh", "color_gaussian"):
            assert e.encoders == ()


def test_catalogue_encoders_and_datasets_resolve():
    from fsiad.fewshot.data.registry import _LOADERS, dataset_kinds
    from fsiad.fewshot.encoders import encoder_names, get_entry

    assert set(registry.names("encoder")) <= set(encoder_names())
    for name in registry.names("encoder"):
        assert get_entry(name).name == name
    assert {"mvtec", "visa", "folder", "textile", "mvtec3d"} <= set(dataset_kinds())
    for kind in registry.names("dataset"):
        loader = registry.load("dataset", kind)
        assert callable(loader) and loader.__module__ == registry.entry("dataset", kind).module
    assert "mvtec3d" in dataset_kinds() and callable(_LOADERS.get("mvtec", None))


def test_mvtec3d_loads_in_a_fresh_interpreter(mvtec3d_root):
    p = _fresh_python(
        "import sys\n"
        "from fsiad.fewshot.data.registry import load_dataset\n"
        "assert not any(m.startswith('fsiad.pointcloud') for m in sys.modules)\n"
        f"(cat,) = load_dataset('mvtec3d', {str(mvtec3d_root)!r})\n"
        "print(cat.name, len(cat.train), len(cat.test))\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["dome", "3", "5"]


class PluginMethod(AnomalyMethod):
    """A plugin method found through an entry point (tests)."""

    regime = "zero-shot"
    options = (Option("gain", "float", 1.0, "score multiplier", gt=0),)

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.opts = self.resolve_options()

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(8)

    def _fit(self, images) -> None:
        pass

    def _predict_batch(self, images: torch.Tensor) -> AnomalyResult:
        maps = images.mean(1) * self.opts["gain"]
        return AnomalyResult(maps.flatten(1).amax(1), maps)


PLUGIN_CATALOGUE = [{"kind": "method", "name": "plugin_cat", "target": f"{__name__}:PluginMethod",
                     "regime": "zero-shot", "summary": "catalogued plugin", "encoders": "dinov2_vits14"}]


@pytest.fixture
def plugins(monkeypatch):
    import importlib.metadata as md

    eps = [EntryPoint("method.plugin_ep", f"{__name__}:PluginMethod", registry.ENTRY_POINT_GROUP),
           EntryPoint("catalogue.tests", f"{__name__}:PLUGIN_CATALOGUE", registry.ENTRY_POINT_GROUP),
           EntryPoint("method.knn", f"{__name__}:PluginMethod", registry.ENTRY_POINT_GROUP),  # built-in wins
           EntryPoint("bogus", "x:y", registry.ENTRY_POINT_GROUP)]
    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda **kw: eps if kw.get("group") == registry.ENTRY_POINT_GROUP
                        else real(**kw))
    registry.reset_plugins()
    yield
    registry.reset_plugins()
    from fsiad.fewshot.methods.base import _REGISTRY

    for name in ("plugin_ep", "plugin_cat"):
        _REGISTRY.pop(name, None)


def test_plugins_extend_the_catalogue_through_entry_points(plugins):
    assert {"plugin_ep", "plugin_cat"} <= set(method_names())
    assert registry.entry("method", "knn").source == "builtin"
    assert "bogus" in registry.PLUGIN_ERRORS
    cls = method_class("plugin_ep")
    assert cls is PluginMethod and cls.name == "plugin_ep"
    m = create_method("plugin_ep", MethodConfig(options={"gain": "2"})).fit()
    assert m.opts["gain"] == 2.0
    with pytest.raises(OptionError, match="-o gain=0"):
        create_method("plugin_ep", MethodConfig(options={"gain": 0}))
    e = registry.entry("method", "plugin_cat")
    assert (e.regime, e.summary, e.encoders) == ("zero-shot", "catalogued plugin", ("dinov2_vits14",))
    r = run_cli("methods")
    assert "plugin_cat" in r.stdout and "catalogued plugin" in r.stdout
    assert "warning: plugin entry point bogus" in r.stderr


def test_unknown_method_is_a_one_line_user_error():
    with pytest.raises(UnknownMethodError) as err:
        method_class("nope")
    assert str(err.value).startswith("unknown method 'nope'; available: btf, color_gaussian")
    assert isinstance(err.value, KeyError)


# -- RGB-D sample collection -------------------------------------------------------------------------
def test_collect_samples_fit_predict_on_mvtec3d_layout(mvtec3d_root):
    from fsiad.pointcloud.methods import RGBDMethod

    cat = mvtec3d_root / "dome"
    cls = method_class("fpfh")
    assert issubclass(cls, RGBDMethod) and not hasattr(AnomalyMethod, "collect_samples")
    refs = cls.collect_samples([cat / "train" / "good"], None)
    assert [s.path.name for s in refs] == ["000.png", "001.png", "002.png"]
    assert all(s.extra["xyz"].suffix == ".tiff" and s.extra["xyz"].parent.name == "xyz" for s in refs)
    bad = (cat / "test" / "dent" / "rgb" / "000.png").resolve()
    targets = cls.collect_samples([cat / "test"], {bad: 1})
    assert len(targets) == 5
    by_name = {(s.path.parent.parent.name, s.path.name): s for s in targets}
    assert by_name[("dent", "000.png")].label == 1 and by_name[("dent", "001.png")].label is None
    assert by_name[("dent", "000.png")].mask_path.name == "000.png"
    assert by_name[("dent", "000.png")].mask_path.parent.name == "gt"
    # a single file and the whole category (train + test) work too; duplicates are dropped
    one = cls.collect_samples([cat / "test" / "color" / "rgb" / "000.png", cat / "test" / "color"], None)
    assert len(one) == 1 and one[0].extra["xyz"] == cat / "test" / "color" / "xyz" / "000.tiff"
    assert len(cls.collect_samples([cat], None)) == 8

    m = create_method("fpfh", MethodConfig(image_size=48))
    m.fit(m.prepare(refs))
    r = m.predict(m.prepare(targets))
    assert r.image_scores.shape == (5,) and r.anomaly_maps.shape == (5, 48, 48)
    labels = torch.tensor([0 if s.path.parent.parent.name == "good" else 1 for s in targets])
    assert r.image_scores[labels == 1].mean() > r.image_scores[labels == 0].mean()


def test_collect_samples_errors_name_the_path(tmp_path):
    from fsiad.fewshot.data.base import DatasetError

    cls = method_class("btf")
    with pytest.raises(DatasetError, match="not found"):
        cls.collect_samples([tmp_path / "missing"], None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no RGB-D samples"):
        cls.collect_samples([tmp_path / "empty"], None)
    write_images(tmp_path / "imgs", 1, defect=False, seed=0)
    with pytest.raises(DatasetError, match="no point cloud for this image"):
        cls.collect_samples([tmp_path / "imgs" / "img_000.png"], None)


def test_score_btf_on_an_mvtec3d_category(mvtec3d_root, tmp_path):
    cat = mvtec3d_root / "dome"
    out = tmp_path / "out"
    r = run_cli("score", "--method", "btf", "--shots", 3, "--normal", cat / "train" / "good", "--out", out,
                "--image-size", 48, "--encoder", "resnet18", "--allow-random", "-q", cat / "test")
    assert r.exit_code == 0, r.output
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    scored = list((out / "maps").glob("*.npy")) if (out / "maps").is_dir() else []
    assert len(scored) == 5 or (results and len(results.get("images", [])) == 5), (r.output, list(out.iterdir()))
