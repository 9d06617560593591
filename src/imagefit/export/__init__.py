"""Exports of fitted models (ONNX, TorchScript)."""
