"""Two-stream layers and the architectures built from them."""

from lit_bioplaus.nn.layers import (
    WEIGHT_MODES,
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
from lit_bioplaus.nn.networks import MLP, ConvAutoencoder, ConvNet, PooledConvNet, TwoStreamNetwork, make_activation

__all__ = [
    "MLP",
    "WEIGHT_MODES",
    "ConvAutoencoder",
    "ConvNet",
    "PooledConvNet",
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
