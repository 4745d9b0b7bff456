"""The choices and defaults of the PyTorch-side commands, kept apart from the stages that
implement them (each stage takes its set from here), so that `featx CMD --help` and argument
checking answer before torch is imported."""

DEFAULT_OPSET = 18
MIN_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
"""featx.export: the torch.onnx paths."""

METHODS = ("supervised", "simsiam", "distill")
STRATEGIES = ("linear", "partial", "full")
AUGMENTATIONS = ("standard", "light", "none")
OPTIMIZERS = ("adamw", "sgd")
"""featx.train: training objectives, which parameters train (supervised), the augmentation
recipes and the optimizers."""
