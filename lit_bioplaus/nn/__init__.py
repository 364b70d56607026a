"""Two-stream layers and the architectures built from them."""

from lit_bioplaus.nn.layers import (
    FEEDBACK_INITS,
    WEIGHT_MODES,
    FeedbackInit,
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamGlobalAvgPool2d,
    TwoStreamLayer,
    TwoStreamLinear,
    TwoStreamMaxPool2d,
    TwoStreamMirror,
    WeightedTwoStreamLayer,
    WeightMode,
)
from lit_bioplaus.nn.networks import (
    MLP,
    ConvAutoencoder,
    ConvNet,
    MultiMNISTNet,
    PooledConvNet,
    TwoStreamNetwork,
    TwoStreamResidual,
)
from lit_bioplaus.nn.pointwise import (
    ERROR_NORMS,
    Activation,
    ErrorNorm,
    TwoStreamActivation,
    TwoStreamBatchNorm,
    make_activation,
)
from lit_bioplaus.nn.resnet import ResNet18, TwoStreamResidualBlock

__all__ = [
    "ERROR_NORMS",
    "FEEDBACK_INITS",
    "MLP",
    "WEIGHT_MODES",
    "Activation",
    "ConvAutoencoder",
    "ConvNet",
    "ErrorNorm",
    "FeedbackInit",
    "MultiMNISTNet",
    "PooledConvNet",
    "ResNet18",
    "TwoStreamActivation",
    "TwoStreamBatchNorm",
    "TwoStreamConv2d",
    "TwoStreamFlatten",
    "TwoStreamGlobalAvgPool2d",
    "TwoStreamLayer",
    "TwoStreamLinear",
    "TwoStreamMaxPool2d",
    "TwoStreamMirror",
    "TwoStreamNetwork",
    "TwoStreamResidual",
    "TwoStreamResidualBlock",
    "WeightMode",
    "WeightedTwoStreamLayer",
    "make_activation",
]
