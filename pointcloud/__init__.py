"""fsiad point-cloud branch: MVTec 3D-AD data, BTF cleaning, FPFH + 2D fusion, inspection.

The dataset kind ``mvtec3d`` and the methods ``btf``, ``fpfh``, ``rgb`` and ``depth`` are in
the catalogue (``fsiad.fewshot.registry``): every command finds them without importing this
package first. Modules: ``data`` (readers, ``collect_rgbd``), ``modalities`` (FPFH / RGB / depth
patch features), ``fusion`` (normalisation and fusion), ``methods`` (the scorer and methods).
"""

from fsiad.pointcloud import data, methods  # noqa: F401
from fsiad.pointcloud.batch import RGBDBatch, build_batch
from fsiad.pointcloud.cleaning import CleaningParams, cleaned_cloud
from fsiad.pointcloud.data import collect_rgbd, folder_samples, load_mvtec3d, rgbd_sample
from fsiad.pointcloud.features import FPFHParams, fpfh_organized, organize_points, pool_to_grid
from fsiad.pointcloud.io import PointCloudError, read_point_file, read_xyz_tiff, write_ply
from fsiad.pointcloud.methods import RGBDMethod

__all__ = [
    "CleaningParams", "FPFHParams", "PointCloudError", "RGBDBatch", "RGBDMethod", "build_batch", "cleaned_cloud",
    "collect_rgbd",
    "folder_samples", "fpfh_organized", "load_mvtec3d", "organize_points", "pool_to_grid", "read_point_file",
    "read_xyz_tiff", "rgbd_sample", "write_ply",
]
