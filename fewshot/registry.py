"""The one plugin catalogue of fsiad: methods, encoders and datasets, 2D and 3D alike.

The catalogue maps ``(kind, name)`` to the module that defines the entry, plus what listings
show without importing it (regime, one-line summary, default encoder). Nothing here imports
torch or any method/encoder/dataset module: ``load(kind, name)`` imports only the one module
that defines ``name``, so ``btf`` works from every command without importing
``fsiad.pointcloud`` first and ``fsiad methods`` stays fast.

Targets are ``"module:attr"``:

* method: ``attr`` is the ``AnomalyMethod`` subclass;
* encoder: the module registers its encoders with ``register_encoder`` when imported (``attr``
  optional and not used);
* dataset: ``attr`` is the loader ``loader(root, categories) -> list[Category]``.

Installed plugins extend the catalogue through the entry-point group ``fsiad.plugins``. Each
entry point is named ``<kind>.<name>`` (kind ``method``, ``encoder`` or ``dataset``) and its
value is the target; e.g. in a plugin's ``pyproject.toml``::

    [project.entry-points."fsiad.plugins"]
    "method.mymethod" = "my_fsiad_plugin.methods:MyMethod"
    "encoder.my_vit" = "my_fsiad_plugin.encoders"
    "dataset.mydata" = "my_fsiad_plugin.data:load_mydata"

A plugin that wants its regime, summary and default encoder in ``fsiad methods`` without
being imported adds an entry point named ``catalogue.<anything>`` whose target is a list of
dicts in a light module (no torch import), with keys ``kind``, ``name``, ``target`` and
optionally ``regime``, ``summary``, ``encoders``::

    "catalogue.my_plugin" = "my_fsiad_plugin.catalogue:ENTRIES"

Built-in names win over plugins of the same kind and name. Methods, encoders and datasets
that register themselves at import time (``register_method``, ``register_encoder``,
``register_dataset``; tests do this) keep working; the catalogue only says where to find
names that are not registered yet.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

KINDS = ("method", "encoder", "dataset")
ENTRY_POINT_GROUP = "fsiad.plugins"
#: the method ``fsiad score`` uses when ``--method`` is not given
DEFAULT_METHOD = "knn"


@dataclass(frozen=True)
class Entry:
    """One catalogue entry.

    Attributes:
        kind: ``method`` | ``encoder`` | ``dataset``.
        name: the name users type (``--method``, ``--encoder``, ``--dataset``).
        target: ``"module:attr"`` (see the module docstring).
        regime: methods only: ``zero-shot``, ``zero-shot-transductive``, ``few-shot`` or ``full-data``.
        summary: one line for listings.
        encoders: methods only: the default encoder, or several tried in order (the first
            whose weights are here is used); empty = the method needs no encoder weights.
        source: ``builtin`` or the plugin distribution / entry point that provided it.
    """

    kind: str
    name: str
    target: str
    regime: str = ""
    summary: str = ""
    encoders: tuple[str, ...] = ()
    source: str = "builtin"

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def attr(self) -> str:
        return self.target.partition(":")[2]


_M = "fsiad.fewshot.methods."
_PC = "fsiad.pointcloud.methods:"
_PC_ENCODERS = ("wide_resnet50_2", "tf_efficientnet_lite0", "dinov2_vits14")
_E = "fsiad.fewshot.encoders."

BUILTINS: tuple[Entry, ...] = (
    # -- 2D methods ----------------------------------------------------------------------
    Entry("method", "knn", _M + "knn:PatchKNN", "few-shot",
          "Nearest-neighbour distance of each test patch to the patches of the K normal shots.",
          ("dinov2_vits14",)),
    Entry("method", "patchcore", _M + "patchcore:PatchCore", "full-data",
          "Full-data PatchCore: coreset memory of locally aggregated mid-level patch features.",
          ("tf_efficientnet_lite0",)),
    Entry("method", "padim", _M + "padim:PaDiM", "full-data",
          "Per-position multivariate Gaussian of patch embeddings; Mahalanobis distance map.",
          ("tf_efficientnet_lite0",)),
    Entry("method", "regad", _M + "regad:RegAD", "few-shot",
          "Per-position Gaussian of augmented support features; Mahalanobis map (training-free RegAD).",
          ("tf_efficientnet_lite0",)),
    Entry("method", "musc", _M + "musc:MuSc", "zero-shot-transductive",
          "Zero-shot transductive anomaly detection by mutual scoring of the unlabeled images.",
          ("dinov2_vits14",)),
    Entry("method", "winclip", _M + "winclip:WinCLIP", "zero-shot",
          "WinCLIP / WinCLIP+: CLIP window prompts (zero-shot) and reference memories (few-shot).",
          ("clip_vitb16plus_240",)),
    Entry("method", "maeday", _M + "maeday:MAEDAY", "zero-shot",
          "Zero-shot anomaly maps from masked-autoencoder reconstruction errors.",
          ("mae_vitb16_pretrain",)),
    Entry("method", "color_gaussian", _M + "color_gaussian:ColorGaussian", "few-shot",
          "Mahalanobis distance of each pixel's RGB colour to a Gaussian of normal colours."),
    # -- 3D (RGB-D / point-cloud) methods --------------------------------------------------
    Entry("method", "btf", _PC + "BTF", "few-shot",
          "Back to the Feature: 2D encoder patch features + FPFH, fused, PatchCore scorer.", _PC_ENCODERS),
    Entry("method", "fpfh", _PC + "FPFHOnly", "few-shot",
          "FPFH features of the organized cloud only (BTF's 3D-only baseline)."),
    Entry("method", "rgb", _PC + "RGBOnly", "few-shot",
          "2D encoder features of the RGB image only, same scorer (BTF's \"RGB iNet\").", _PC_ENCODERS),
    Entry("method", "depth", _PC + "DepthOnly", "few-shot",
          "Depth map rendered as a 3-channel image through the 2D encoder (BTF's \"Depth iNet\").",
          _PC_ENCODERS),
    # -- encoders (the module registers them on import) ----------------------------------
    *(Entry("encoder", n, _E + "clip", summary=s) for n, s in (
        ("clip_vitb16_openai", "OpenAI CLIP ViT-B/16 224px"),
        ("clip_vitb16plus_240", "OpenCLIP ViT-B/16+ 240px, LAION-400M e31 (WinCLIP default)"),
        ("clip_vitl14_336_openai", "OpenAI CLIP ViT-L/14 336px"))),
    *(Entry("encoder", n, _E + "dinov2", summary=s) for n, s in (
        ("dinov2_vits14", "DINOv2 ViT-S/14 (21M)"),
        ("dinov2_vitb14", "DINOv2 ViT-B/14 (86M)"),
        ("dinov2_vitl14", "DINOv2 ViT-L/14 (300M)"),
        ("dinov2_vitg14", "DINOv2 ViT-g/14 (1.1B)"))),
    Entry("encoder", "mae_vitb16", _E + "mae", summary="MAE ViT-B/16 (ImageNet self-supervised, timm)"),
    Entry("encoder", "mae_vitb16_pretrain", _E + "mae_pretrain",
          summary="MAE ViT-B/16 with decoder (ImageNet, HF facebook/vit-mae-base; MAEDAY)"),
    *(Entry("encoder", n, _E + "cnn", summary=s) for n, s in (
        ("resnet18", "ResNet-18, ImageNet (torchvision V1)"),
        ("wide_resnet50_2", "Wide ResNet-50-2, ImageNet (torchvision V1)"),
        ("tf_efficientnet_lite0", "EfficientNet-Lite0 (TF port), ImageNet"))),
    # -- datasets ------------------------------------------------------------------------
    Entry("dataset", "mvtec", "fsiad.fewshot.data.mvtec:load_mvtec",
          summary="MVTec AD layout (also MPDD, BTAD)"),
    Entry("dataset", "visa", "fsiad.fewshot.data.visa:load_visa", summary="VisA (raw layout + official split_csv/1cls.csv)"),
    Entry("dataset", "folder", "fsiad.fewshot.data.folder:load_folder", summary="Generic folder dataset (category folders of good and defect images)"),
    Entry("dataset", "textile", "fsiad.fewshot.data.textile:load_textile", summary="Simulated textile set (conformal-clip-data package)"),
    Entry("dataset", "mvtec3d", "fsiad.pointcloud.data:load_mvtec3d", summary="MVTec 3D-AD (RGB + xyz point clouds)"),
)

_plugins: list[Entry] | None = None
#: plugin entry points that could not be read: entry-point name -> one-line reason
PLUGIN_ERRORS: dict[str, str] = {}


def _entry_from_dict(d: Any, source: str) -> Entry:
    if not isinstance(d, dict) or not {"kind", "name", "target"} <= set(d):
        raise ValueError("catalogue items must be dicts with kind, name and target")
    if d["kind"] not in KINDS:
        raise ValueError(f"unknown kind {d['kind']!r}; use one of {KINDS}")
    encoders = d.get("encoders") or ()
    return Entry(d["kind"], str(d["name"]), str(d["target"]), str(d.get("regime", "")), str(d.get("summary", "")),
                 (encoders,) if isinstance(encoders, str) else tuple(encoders), source)


def plugin_entries() -> list[Entry]:
    """Entries declared by installed distributions in the ``fsiad.plugins`` entry-point group.

    Read once per process from the installed metadata; a ``catalogue.*`` entry point imports
    its (light) module. Broken entry points are skipped and reported in ``PLUGIN_ERRORS``.
    """
    global _plugins
    if _plugins is not None:
        return _plugins
    from importlib.metadata import entry_points

    found: list[Entry] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kind, _, name = ep.name.partition(".")
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value
        try:
            if kind == "catalogue":
                items = ep.load()
                found.extend(_entry_from_dict(d, dist) for d in items)
            elif kind in KINDS and name:
                found.append(Entry(kind, name, ep.value, source=dist))
            else:
                raise ValueError(f"entry point names are <kind>.<name> with kind in {KINDS} or catalogue")
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break fsiad
            PLUGIN_ERRORS[ep.name] = f"{type(exc).__name__}: {exc}"
    _plugins = found
    return found


def entries(kind: str) -> dict[str, Entry]:
    """``{name: Entry}`` of one kind: built-ins, then plugins (built-ins win on a clash)."""
    if kind not in KINDS:
        raise ValueError(f"unknown catalogue kind {kind!r}; use one of {KINDS}")
    out: dict[str, Entry] = {}
    for e in (*BUILTINS, *plugin_entries()):
        if e.kind == kind and e.name not in out:
            out[e.name] = e
    return out


def entry(kind: str, name: str) -> Entry | None:
    """The catalogue entry of ``name`` (``None`` when the catalogue does not know it)."""
    return entries(kind).get(name)


def names(kind: str) -> list[str]:
    """Sorted catalogue names of one kind (registered-at-import names are added by each registry)."""
    return sorted(entries(kind))


def load(kind: str, name: str) -> Any:
    """Import the module that defines ``name`` and return its attribute (or the module).

    Raises:
        KeyError: ``name`` is not in the catalogue.
        ImportError: the defining module (or one of its dependencies) cannot be imported.
    """
    e = entry(kind, name)
    if e is None:
        raise KeyError(name)
    module = importlib.import_module(e.module)
    return getattr(module, e.attr) if e.attr else module


def reset_plugins() -> None:
    """Forget the plugin entries read so far (tests that install entry points)."""
    global _plugins
    _plugins = None
    PLUGIN_ERRORS.clear()


__all__ = ["BUILTINS", "DEFAULT_METHOD", "ENTRY_POINT_GROUP", "Entry", "KINDS", "PLUGIN_ERRORS", "entries",
           "entry", "load", "names", "plugin_entries", "reset_plugins"]
