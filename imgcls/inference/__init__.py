"""Using a trained run: predict (predictor.py: a run, a cv folder or an ensemble -> CSV), evaluate on a
labelled set (evaluate.py), export (export.py: ONNX, torch.export, TorchScript) and the folder plain timm
opens (timmdir.py). Everything here reads a run folder through ModelInfo; nothing imports the engine."""
