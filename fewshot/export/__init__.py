"""Export of fitted models to ONNX bundles (``exporter``), their torch-free runner (``runner``) and
batch scoring on Ray (``ray_engine``). Submodules are imported on use: this package imports nothing."""
