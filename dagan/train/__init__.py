"""Training of DAGAN: G/D steps (:mod:`.steps`), state (:mod:`.state`), loop (:mod:`.loop`)."""

from dagan.train.callbacks import NullLogger, StepReport, TrainingLogger
from dagan.train.loop import TrainResult, train
from dagan.train.steps import LossWeights, NonFiniteLossError, Precision, d_step, g_step

__all__ = ["LossWeights", "NonFiniteLossError", "NullLogger", "Precision", "StepReport", "TrainResult",
           "TrainingLogger", "d_step", "g_step", "train"]
