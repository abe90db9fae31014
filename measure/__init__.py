"""Probes of a live vLLM server, and the simulator served behind vLLM's HTTP interface.

* ``servesim measure`` (:mod:`.harness`, :mod:`.client`, :mod:`.plans`, :mod:`.metrics_csv`,
  :mod:`.launcher`, :mod:`.rundir`, :mod:`.plots`): run a plan of exact-length probes against an
  OpenAI-compatible server and write a run directory (docs/measure.md);
  ``--backend torch-kernels`` (:mod:`.torch_probe`) times GEMM and attention kernels with PyTorch.
* ``servesim serve`` (:mod:`.serve`, :mod:`.live_engine`, :mod:`.serve_metrics`): the engine of
  ``servesim simulate`` in scaled real time behind ``/v1/completions`` and friends (docs/serve.md).

The harness modules never import the simulator (``servesim.sim``); the server modules do.
"""
