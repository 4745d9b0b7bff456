"""The choices and defaults of the PyTorch-side commands, kept apart from the stages that
implement them (each stage takes its set from here), so that `featx CMD --help` and argument
checking answer before torch is imported."""

DEFAULT_OPSET = 18
MIN_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
"""featx.export: the torch.onnx paths."""

METHODS = ("supervised", "simsiam", "distill", "simclr", "autoencoder", "multitask", "gan")
STRATEGIES = ("linear", "partial", "full")
AUGMENTATIONS = ("standard", "light", "none")
OPTIMIZERS = ("adamw", "sgd")
RECONSTRUCTION_LOSSES = ("mse", "l1")
"""featx.train: training objectives, which parameters train (supervised), the augmentation
recipes, the optimizers and the autoencoder's reconstruction losses."""
