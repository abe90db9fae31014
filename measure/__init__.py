"""Probes of a live vLLM server (``servesim measure``).

* :mod:`.harness`, :mod:`.client`, :mod:`.plans`, :mod:`.metrics_csv`, :mod:`.launcher`,
  :mod:`.rundir`, :mod:`.plots`: run a plan of exact-length probes against an OpenAI-compatible
  server and write a run directory (docs/measure.md);
* ``--backend torch-kernels`` (:mod:`.torch_probe`) times GEMM and attention kernels with PyTorch.

The harness never imports the simulator (only :mod:`.torch_probe` reads architecture facts from
``servesim.sim.model_catalog``), nor the served simulator (``servesim.serve``), which it probes over
HTTP like any vLLM server.
"""
