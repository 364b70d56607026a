"""Two-stream layers and the architectures built from them."""

from lit_bioplaus.nn.layers import (
    WEIGHT_MODES,
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamLayer,
    TwoStreamLinear,
    TwoStreamResidualBlock,
    WeightedTwoStreamLayer,
    WeightMode,
)
from lit_bioplaus.nn.networks import MLP, ConvNet, TwoStreamNetwork, make_activation

__all__ = [
    "MLP",
    "WEIGHT_MODES",
    "ConvNet",
    "TwoStreamConv2d",
    "TwoStreamFlatten",
    "TwoStreamLayer",
    "TwoStreamLinear",
    "TwoStreamNetwork",
    "TwoStreamResidualBlock",
    "WeightMode",
    "WeightedTwoStreamLayer",
    "make_activation",
]
