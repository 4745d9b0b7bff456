"""`featx train`: supervised transfer learning, SimSiam pretraining and distillation.

One concern per file: data (inputs, split), augment (transforms), supervised (init, head,
strategies), simsiam, distill, loop (optimizer, schedule, early stopping, resume), report
(curves, summary), job (the `train` entry point).
"""

from featx.train.job import METHODS, TrainResult, train
from featx.train.supervised import STRATEGIES

__all__ = ["METHODS", "STRATEGIES", "TrainResult", "train"]
