"""Preference-tuning workbench: one data layer, many alignment methods, one run directory."""

__version__ = "0.1.0"
