"""servesim: a capacity-planning simulator for LLM inference serving.

Packages: ``servesim.sim`` (the engine and its models), ``servesim.calibrate`` (fitting and the
shipped profiles), ``servesim.measure`` (probes of a real vLLM server), ``servesim.serve`` (the
simulator behind vLLM's HTTP interface), ``servesim.scenarios`` (what-if sweeps).  The console
command is ``servesim`` (:mod:`servesim.cli`).

The subpackages live at the top of the repository (``sim/``, ``calibrate/``, ...) and are mapped
under ``servesim`` by installing (``[tool.setuptools] package-dir``; ``pip install -e .`` for a
checkout).  Nothing here extends the package's search path: run from a checkout, an installed copy
is what imports (ARCHITECTURE.md).
"""

__version__ = "0.1.0"
