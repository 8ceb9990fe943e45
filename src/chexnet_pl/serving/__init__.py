"""A trained model outside training: exported files (ONNX, TorchScript) and the local web service."""
