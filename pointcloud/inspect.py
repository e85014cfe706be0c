"""Score one RGB-D sample or point cloud and write viewable outputs.

Outputs (``<stem>`` = sample name):
    * ``<stem>_scores.ply``: the sample's valid points coloured by anomaly score (jet colour map,
      min-max over the sample), with the raw score as a float property ``anomaly_score``;
    * ``<stem>_overlay.png``: the RGB image (or the depth image when there is none) blended with
      the score map, at the input resolution;
    * ``<stem>_depth_score.png``: depth image and score map side by side, at the working side;
    * ``<stem>_inspect.json``: image score, score range, method description and file names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fsiad.fewshot.data.base import Sample
from fsiad.fewshot.workflow import render
from fsiad.pointcloud.batch import load_rgbd
from fsiad.pointcloud.features import depth_image, organize_points
from fsiad.pointcloud.io import POINT_SUFFIXES, read_point_file, valid_mask, write_ply
from fsiad.pointcloud.methods import RGBDMethod


@dataclass
class Inspection:
    """Result of ``inspect_sample``.

    Attributes:
        image_score: anomaly score of the sample.
        anomaly_map: ``[S, S]`` map at the method's working side.
        points: ``[P, 3]`` points written to the ``.ply``.
        point_scores: ``[P]`` their anomaly scores.
        files: output name -> path.
    """

    image_score: float
    anomaly_map: np.ndarray
    points: np.ndarray
    point_scores: np.ndarray
    files: dict[str, Path] = field(default_factory=dict)


def inspect_sample(method: RGBDMethod, sample: Sample, out_dir: str | Path, stem: str | None = None) -> Inspection:
    """Score ``sample`` with a fitted point-cloud method and write the inspection outputs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xyz_path = Path(sample.extra.get("xyz", sample.path))
    stem = stem or Path(sample.path).stem
    batch = method.prepare([sample])
    res = method.predict(batch)
    amap = res.anomaly_maps[0].numpy()
    score = float(res.image_scores[0])

    if xyz_path.suffix.lower() in POINT_SUFFIXES:
        pts, _ = read_point_file(xyz_path, min_points=5)
        _, _, cell = organize_points(pts, method.size)
        pscores = amap.reshape(-1)[cell]
        base = (batch.rgb[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        if not bool(batch.has_rgb[0]):
            base = depth_image(batch.xyz[0].numpy())
        full_map = amap
    else:
        rgb, xyz, _ = load_rgbd(sample, method.size, method.cleaning, False)
        full_map = method.preprocess.map_to_image(amap, xyz.shape[:2])
        ok = valid_mask(xyz)
        pts, pscores = xyz[ok], full_map[ok]
        base = rgb if rgb is not None else depth_image(xyz)
    lo, hi = float(amap.min()), float(amap.max())

    files = {"ply": out_dir / f"{stem}_scores.ply", "overlay": out_dir / f"{stem}_overlay.png",
             "depth_score": out_dir / f"{stem}_depth_score.png", "json": out_dir / f"{stem}_inspect.json"}
    write_ply(files["ply"], pts, render.colors(render.normalise(pscores, lo, hi)), pscores)
    render.save_png(render.overlay(base, full_map, lo, hi), files["overlay"])
    depth = depth_image(batch.xyz[0].numpy())
    side = np.concatenate([depth, render.colormap(render.normalise(amap, lo, hi))], axis=1)
    render.save_png(side, files["depth_score"])
    meta = {"sample": str(sample.path), "point_cloud": str(xyz_path), "image_score": score,
            "map_min": lo, "map_max": hi, "n_points": int(len(pts)),
            "colour_map": "jet, min-max over this sample's map", "method": method.describe(),
            "files": {k: v.name for k, v in files.items()}}
    files["json"].write_text(json.dumps(meta, indent=2, default=str))
    return Inspection(score, amap, pts, pscores, files)


def display_available() -> bool:
    """Whether an interactive window can be opened (X11 / Wayland display set)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def show_ply(path: str | Path) -> bool:
    """Open an open3d viewer on ``path`` when a display exists; returns whether it was shown."""
    if not display_available():
        return False
    import open3d as o3d

    o3d.visualization.draw_geometries([o3d.io.read_point_cloud(str(path))], window_name=f"fsiad inspect: {Path(path).name}")
    return True
