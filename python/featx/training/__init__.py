"""`featx train`: supervised transfer learning, SimSiam pretraining and distillation.

One concern per file: data (inputs, split), augment (transforms), supervised (init, head,
strategies), simsiam, distill, loop (optimizer, schedule, early stopping, resume), report
(curves, summary), job (the `train` entry point). The choices each offers are in featx.options.
"""

from featx.training.job import TrainResult, train

__all__ = ["TrainResult", "train"]
