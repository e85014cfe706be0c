"""``fsiad inspect``: score one RGB-D sample or point cloud and write a coloured cloud + images.

Parsing only: the work is ``fsiad.pointcloud.session.inspect_path``.
"""

from __future__ import annotations

from pathlib import Path

import click
from fsiad.cli.options import method_config_from, method_options


@click.command("inspect")
@click.argument("sample", type=click.Path(path_type=Path))
@click.option("--xyz", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Organized point cloud (.tiff) of an RGB SAMPLE (default: MVTec 3D-AD sibling xyz/).")
@click.option("--normal", "normal_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of normal references (rgb/ + xyz/, png + tiff pairs, or .ply/.pcd files).")
@click.option("--shots", type=click.IntRange(min=0), default=0, show_default=True,
              help="References drawn from --normal (0 = all).")
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
    from fsiad.pointcloud.inspect import show_ply
    from fsiad.pointcloud.session import inspect_path

    result, model = inspect_path(sample, out, xyz=xyz, normal=normal_dir, model=model_dir, method=method,
                                 config=method_config_from(kwargs), shots=shots, seed=seed, save_model=save_model)
    click.echo(f"{sample}: anomaly score {result.image_score:.4f} ({model.name}"
               + (f", encoder {model.config.encoder}" if model.encoder is not None else "") + ")")
    for name, path in result.files.items():
        click.echo(f"  {name}: {path}")
    if show and not show_ply(result.files["ply"]):
        click.echo("  --show: no display available (DISPLAY/WAYLAND_DISPLAY unset); open the .ply in a viewer")


commands = [inspect_command]
