"""The simulation engine: a vLLM-faithful replica in SimPy, and the models it runs on.

Where things are: :mod:`.scheduler` / :mod:`.scheduler_v0` (policies), :mod:`.kv_cache_manager`
and :mod:`.block_pool` (paged KV cache), :mod:`.decode_batch` (the O(1)-per-step decode batch),
:mod:`.cost_model` (step time), :mod:`.memory` (KV capacity), :mod:`.engine` (the SimPy process),
:mod:`.workload` / :mod:`.lengths` / :mod:`.arrivals` / :mod:`.traces` / :mod:`.sources` (requests), :mod:`.metrics` (records and
summaries), :mod:`.runner` (one run end to end), :mod:`.models` / :mod:`.model_catalog` /
:mod:`.gpus` (hardware and architectures), :mod:`.profile` (fitted coefficients).
"""
