"""s2o-platform: SAR-to-optical translation on Ray."""

__version__ = "0.1.0"
