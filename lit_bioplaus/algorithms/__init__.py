"""Learning rules as LightningModules."""

from lit_bioplaus.algorithms.backprop import BackProp
from lit_bioplaus.algorithms.base import BioplausModule, classification_loss
from lit_bioplaus.algorithms.counter_current import CounterCurrent
from lit_bioplaus.algorithms.counter_hebb import CounterHebb, DirectFeedbackAlignment, FeedbackAlignment
from lit_bioplaus.algorithms.guided import GuidedBackProp, GuidedCounterHebb, GuidedLearning, TaskTarget

__all__ = [
    "BackProp",
    "BioplausModule",
    "CounterCurrent",
    "CounterHebb",
    "DirectFeedbackAlignment",
    "FeedbackAlignment",
    "GuidedBackProp",
    "GuidedCounterHebb",
    "GuidedLearning",
    "TaskTarget",
    "classification_loss",
]
