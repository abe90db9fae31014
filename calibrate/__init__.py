"""Calibration: turn real measurements into profiles; the shipped default profiles it writes live
with the package that reads them, in ``sim/profiles/``."""
