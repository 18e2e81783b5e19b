from .configuration_vaswani import VaswaniConfig

__all__ = ["VaswaniConfig"]
