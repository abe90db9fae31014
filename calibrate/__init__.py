"""Calibration: turn real measurements into profiles; the shipped default profiles live in
``calibrate/profiles/``."""
