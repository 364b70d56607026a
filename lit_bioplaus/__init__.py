"""lit-bioplaus: biologically plausible learning rules as PyTorch Lightning modules."""

from lit_bioplaus.algorithms import BackProp, BioplausModule

__all__ = ["BackProp", "BioplausModule"]
__version__ = "0.1.0"
