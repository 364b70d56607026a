"""Two-stream layers and the architectures built from them."""

from lit_bioplaus.nn.layers import (
    FEEDBACK_INITS,
    WEIGHT_MODES,
    FeedbackInit,
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamLayer,
    TwoStreamLinear,
    TwoStreamMaxPool2d,
    TwoStreamMirror,
    TwoStreamResidualBlock,
    WeightedTwoStreamLayer,
    WeightMode,
)
from lit_bioplaus.nn.networks import MLP, ConvAutoencoder, ConvNet, MultiMNISTNet, PooledConvNet, TwoStreamNetwork
from lit_bioplaus.nn.pointwise import Activation, TwoStreamActivation, TwoStreamBatchNorm, make_activation

__all__ = [
    "FEEDBACK_INITS",
    "MLP",
    "WEIGHT_MODES",
    "Activation",
    "ConvAutoencoder",
    "ConvNet",
    "FeedbackInit",
    "MultiMNISTNet",
    "PooledConvNet",
    "TwoStreamActivation",
    "TwoStreamBatchNorm",
    "TwoStreamConv2d",
    "TwoStreamFlatten",
    "TwoStreamLayer",
    "TwoStreamLinear",
    "TwoStreamMaxPool2d",
    "TwoStreamMirror",
    "TwoStreamNetwork",
    "TwoStreamResidualBlock",
    "WeightMode",
    "WeightedTwoStreamLayer",
    "make_activation",
]
