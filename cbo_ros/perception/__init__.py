"""Models and frames: ONNX Runtime classifier, image operations, media sources and labels."""
