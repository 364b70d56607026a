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
from lit_bioplaus.cuda_probe import skip_unloadable_nvml_check

# After Lightning's import (by the rules above), which turns the NVML-based check on.
skip_unloadable_nvml_check()

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
