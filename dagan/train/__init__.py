"""Training of DAGAN: the loop (:mod:`.loop`) over batches (:mod:`.batches`) per a plan (:mod:`.plan`), the
G/D steps (:mod:`.steps`) on the training state (:mod:`.state`)."""

from dagan.train.callbacks import NullLogger, StartReport, StepReport, TrainingLogger
from dagan.train.loop import TrainResult, train
from dagan.train.state import LossWeights, Precision, TrainingState
from dagan.train.steps import NonFiniteError, NonFiniteLossError, NonFiniteWeightsError, d_step, g_step

__all__ = ["LossWeights", "NonFiniteError", "NonFiniteLossError", "NonFiniteWeightsError", "NullLogger", "Precision",
           "StartReport", "StepReport", "TrainResult", "TrainingLogger", "TrainingState", "d_step", "g_step", "train"]
