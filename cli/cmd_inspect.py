"""``fsiad inspect``: score one RGB-D sample or point cloud and write a coloured cloud + images."""

from __future__ import annotations

from pathlib import Path

import click
from fsiad.cli.options import method_config_from, method_options

_CLOUD_SUFFIXES = (".ply", ".pcd", ".tiff", ".tif")


def _sample_for(path: Path, xyz: Path | None):
    from fsiad.pointcloud.data import rgbd_sample

    if path.suffix.lower() in _CLOUD_SUFFIXES:
        if xyz is not None:
            raise click.BadParameter("give --xyz only with an RGB image", param_hint="--xyz")
        return rgbd_sample(None, path)
    if xyz is None:  # MVTec 3D-AD layout: <label>/rgb/<stem>.png -> <label>/xyz/<stem>.tiff
        guess = [path.parent.parent / "xyz" / f"{path.stem}{s}" for s in (".tiff", ".tif")]
        guess += [path.with_suffix(s) for s in (".tiff", ".tif")]
        xyz = next((g for g in guess if g.is_file()), None)
        if xyz is None:
            raise click.BadParameter(f"{path}: no point cloud found next to the image; pass --xyz", param_hint="--xyz")
    return rgbd_sample(path, xyz)


@click.command("inspect")
@click.argument("sample", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--xyz", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Organized point cloud (.tiff) of an RGB SAMPLE (default: MVTec 3D-AD sibling xyz/).")
@click.option("--normal", "normal_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of normal references (rgb/ + xyz/, png + tiff pairs, or .ply/.pcd files).")
@click.option("--shots", type=int, default=0, show_default=True, help="References drawn from --normal (0 = all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the reference draw.")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Fitted model folder (from --save-model) instead of --normal.")
@click.option("--method", "-m", default="btf", show_default=True, help="btf, fpfh, rgb or depth.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--save-model", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Save the model fitted on --normal here.")
@click.option("--show", is_flag=True, help="Open an interactive open3d window (only when a display exists).")
@method_options
def inspect_command(sample: Path, xyz: Path | None, normal_dir: Path | None, shots: int, seed: int,
                    model_dir: Path | None, method: str, out: Path, save_model: Path | None, show: bool,
                    **kwargs) -> None:
    """Score SAMPLE (an RGB image with its xyz .tiff, an xyz .tiff, or a .ply/.pcd) against normal
    references and write <stem>_scores.ply, <stem>_overlay.png and <stem>_depth_score.png to OUT."""
    import fsiad.pointcloud.data  # noqa: F401  (registers the point-cloud methods and dataset)
    import fsiad.pointcloud.methods  # noqa: F401
    from fsiad.fewshot.data import DatasetError, sample_shots
    from fsiad.fewshot.methods import AnomalyMethod, create_method
    from fsiad.pointcloud.data import folder_samples
    from fsiad.pointcloud.inspect import inspect_sample, show_ply
    from fsiad.pointcloud.methods import RGBDMethod

    if (normal_dir is None) == (model_dir is None):
        raise click.UsageError("give exactly one of --normal DIR (fit on normal references) or --model DIR")
    if shots < 0:
        raise click.BadParameter("must be >= 0", param_hint="--shots")
    config = method_config_from(kwargs)
    try:
        target = _sample_for(sample, xyz)
        if model_dir is not None:
            model = AnomalyMethod.load(model_dir, device=config.device, weights=config.weights)
        else:
            model = create_method(method, config)
            refs = folder_samples(normal_dir)
            if 0 < shots < len(refs):
                refs = sample_shots(refs, shots, seed)
            model.fit(model.prepare(refs))
            if save_model is not None:
                model.save(save_model, extra={"references": [str(r.path) for r in refs]})
        if not isinstance(model, RGBDMethod):
            raise click.UsageError(f"method {model.name!r} is not a point-cloud method (use btf, fpfh, rgb or depth)")
        result = inspect_sample(model, target, out)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{sample}: anomaly score {result.image_score:.4f} ({model.name}"
               + (f", encoder {model.config.encoder}" if model.encoder is not None else "") + ")")
    for name, path in result.files.items():
        click.echo(f"  {name}: {path}")
    if show and not show_ply(result.files["ply"]):
        click.echo("  --show: no display available (DISPLAY/WAYLAND_DISPLAY unset); open the .ply in a viewer")


commands = [inspect_command]
