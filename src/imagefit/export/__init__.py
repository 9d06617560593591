"""Exports of fitted models (ONNX, TorchScript)."""

# What `imagefit export` writes, and the largest absolute difference in any probability allowed
# between the export and the PyTorch model on the check images.
FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
