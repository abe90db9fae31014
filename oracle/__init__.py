"""vLLM itself as the oracle for servesim's v1 scheduler and KV cache manager.

:mod:`.records` defines the request stream and the per-step record; :mod:`.vllm_driver` runs a
stream through the installed vLLM's real ``Scheduler`` (CPU only, fake model outputs);
:mod:`.servesim_driver` produces the same records from servesim's scheduler (exact and fast paths)
and from a whole engine run (bulk decode runs expanded to steps); :mod:`.replay` replays an engine
run through vLLM.  Only :mod:`.vllm_driver` needs vLLM (``oracle/install.sh``); see docs/oracle.md.
"""
