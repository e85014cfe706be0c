"""The library behind ``fsiad inspect``: one RGB-D sample (or point cloud) scored against normal
references or a saved model, its evidence written to an output folder.

``inspect_path`` owns what the command used to do itself: locating the point cloud of an RGB
image (MVTec 3D-AD layout: ``<label>/rgb/<stem>.png`` -> ``<label>/xyz/<stem>.tiff``, or a
``.tiff`` beside the image), the reference draw, the fit or the model load, the output-folder
rules (never inside an input, locked while written) and the method-kind check. Errors are
``FsiadError`` subclasses with one-line messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsiad.fewshot.errors import OptionError

CLOUD_SUFFIXES = (".ply", ".pcd", ".tiff", ".tif")


def sample_for(path: str | Path, xyz: str | Path | None = None) -> Any:
    """The RGB-D ``Sample`` of an RGB image (its cloud found by the layout or given) or of a cloud file."""
    from fsiad.fewshot.data.base import DatasetError
    from fsiad.pointcloud.data import rgbd_sample

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.suffix.lower() in CLOUD_SUFFIXES:
        if xyz is not None:
            raise OptionError("--xyz: give it only with an RGB image (SAMPLE is already a point cloud)")
        return rgbd_sample(None, path)
    if xyz is None:
        guess = [path.parent.parent / "xyz" / f"{path.stem}{s}" for s in (".tiff", ".tif")]
        guess += [path.with_suffix(s) for s in (".tiff", ".tif")]
        xyz = next((g for g in guess if g.is_file()), None)
        if xyz is None:
            raise DatasetError(f"{path}: no point cloud found next to the image (xyz/{path.stem}.tiff); pass --xyz")
    return rgbd_sample(path, Path(xyz))


def inspect_path(sample: str | Path, out: str | Path, *, xyz: str | Path | None = None,
                 normal: str | Path | None = None, model: str | Path | None = None, method: str = "btf",
                 config: Any = None, shots: int = 0, seed: int = 0, save_model: str | Path | None = None):
    """Score ``sample`` and write ``<stem>_scores.ply``, ``<stem>_overlay.png``, ``<stem>_depth_score.png``.

    Args:
        normal: folder of normal references (``rgb/`` + ``xyz/``, png + tiff pairs, or clouds);
            ``shots`` of them are drawn with ``seed`` (0 = all). Exclusive with ``model``.
        model: a model folder saved earlier (``save_model``). config: ``MethodConfig``.

    Returns:
        ``(Inspection, method)``.
    """
    from fsiad.fewshot.data import sample_shots
    from fsiad.fewshot.fileio import OutputLock, check_out_not_input
    from fsiad.fewshot.methods import AnomalyMethod, create_method
    from fsiad.fewshot.methods.base import MethodConfig
    from fsiad.pointcloud.data import folder_samples
    from fsiad.pointcloud.inspect import inspect_sample
    from fsiad.pointcloud.methods import RGBDMethod

    if (normal is None) == (model is None):
        raise OptionError("give exactly one of --normal DIR (fit on normal references) or --model DIR")
    if shots < 0:
        raise OptionError(f"--shots {shots}: must be >= 0")
    check_out_not_input(out, [sample, xyz, normal, model])
    if save_model is not None:
        check_out_not_input(save_model, [sample, xyz, normal], option="--save-model")
    config = config or MethodConfig()
    target = sample_for(sample, xyz)
    if model is not None:
        fitted = AnomalyMethod.load(model, device=config.device, weights=config.weights)
    else:
        from fsiad.fewshot.methods import method_class

        if not issubclass(method_class(method), RGBDMethod):
            raise OptionError(f"--method {method}: not a point-cloud method (use btf, fpfh, rgb or depth)")
        fitted = create_method(method, config)
        refs = folder_samples(normal)
        if 0 < shots < len(refs):
            refs = sample_shots(refs, shots, seed)
        fitted.fit(fitted.prepare(refs))
        if save_model is not None:
            with OutputLock(save_model, "fsiad inspect --save-model"):
                fitted.save(save_model, extra={"references": [str(r.path) for r in refs]})
    if not isinstance(fitted, RGBDMethod):
        raise OptionError(f"{model}: method {fitted.name!r} is not a point-cloud method (use btf, fpfh, rgb or depth)")
    with OutputLock(out, "fsiad inspect"):
        return inspect_sample(fitted, target, out), fitted
