"""servesim: a capacity-planning simulator for LLM inference serving.

Packages: ``servesim.sim`` (the engine and its models), ``servesim.calibrate`` (fitting and the
shipped profiles), ``servesim.measure`` (probes of a real vLLM server), ``servesim.scenarios``
(what-if sweeps).  The console command is ``servesim`` (:mod:`servesim.cli`).
"""
__version__ = "0.1.0"
