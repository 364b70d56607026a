"""lit-bioplaus: biologically plausible learning rules as PyTorch Lightning modules."""

from lit_bioplaus.algorithms import (
    BackProp,
    BioplausModule,
    CounterCurrent,
    CounterHebb,
    DirectFeedbackAlignment,
    FeedbackAlignment,
    GuidedBackProp,
    GuidedCounterHebb,
)

__all__ = [
    "BackProp",
    "BioplausModule",
    "CounterCurrent",
    "CounterHebb",
    "DirectFeedbackAlignment",
    "FeedbackAlignment",
    "GuidedBackProp",
    "GuidedCounterHebb",
]
__version__ = "0.1.0"
