"""`featx train`: supervised transfer learning, self-supervised pretraining and distillation.

One concern per file: data (inputs, split), augment (transforms), supervised (init, head,
strategies), simsiam, simclr, autoencoder, distill, knn (the k-NN monitor), loop (optimizer,
schedule, early stopping, resume), report (curves, summary), job (the `train` entry point).
The choices each offers are in featx.options.
"""

from featx.training.job import TrainResult, train

__all__ = ["TrainResult", "train"]
