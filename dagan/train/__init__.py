"""Training of DAGAN: G/D steps (:mod:`.steps`), state (:mod:`.state`), loop (:mod:`.loop`)."""

from dagan.train.callbacks import NullLogger, StartReport, StepReport, TrainingLogger
from dagan.train.loop import TrainResult, train
from dagan.train.steps import (
    LossWeights,
    NonFiniteError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    Precision,
    d_step,
    g_step,
)

__all__ = ["LossWeights", "NonFiniteError", "NonFiniteLossError", "NonFiniteWeightsError", "NullLogger", "Precision",
           "StartReport", "StepReport", "TrainResult", "TrainingLogger", "d_step", "g_step", "train"]
