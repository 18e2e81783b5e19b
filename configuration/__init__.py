"""The lowest layer: the model's configuration, and the pieces every layer shares (the error for bad input, atomic
file writes). Nothing here imports another part of the package."""

from .configuration_vaswani import VaswaniConfig
from .errors import InputError

__all__ = ["VaswaniConfig", "InputError"]
