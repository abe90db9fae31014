"""servesim: a capacity-planning simulator for LLM inference serving.

Packages: ``servesim.sim`` (the engine and its models), ``servesim.calibrate`` (fitting and the
shipped profiles), ``servesim.measure`` (probes of a real vLLM server), ``servesim.scenarios``
(what-if sweeps).  The console command is ``servesim`` (:mod:`servesim.cli`).
"""
import os as _os

__version__ = "0.1.0"

# The design card keeps the subpackages at the repository's top level (sim/, calibrate/, ...);
# installing maps them under servesim/.  When this file is imported from a source checkout instead
# (e.g. `python -m servesim` in the repo root, which puts the checkout first on sys.path), let the
# subpackages resolve from the top level too, so the checkout behaves like the installed package.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "sim")) and _os.path.isfile(_os.path.join(_root, "sim", "engine.py")):
    __path__.append(_root)  # noqa: F821 (the package's own search path)
