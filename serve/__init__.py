"""The simulator served behind vLLM's OpenAI-compatible HTTP interface (``servesim serve``).

* :mod:`.server`: the aiohttp application (``/v1/completions``, ``/v1/chat/completions``,
  ``/v1/models``, ``/health``, ``/version``, ``/metrics``, ...) and :func:`~.server.serve`;
* :mod:`.live_engine`: the engine of ``servesim simulate`` advanced with the wall clock, fed by
  HTTP requests, with the abort chain (a client that goes away aborts its request);
* :mod:`.openai_protocol`: vLLM's request bodies as pydantic models, its error shape;
* :mod:`.metrics`: ``/metrics`` under vLLM's metric names;
* :mod:`.support`: options, token counting, EOS lengths, access and stats lines;
* :mod:`.cli`: the ``serve`` subcommand.

It builds on :mod:`servesim.sim` only; the measurement harness (:mod:`servesim.measure`) talks to
it over HTTP like to any vLLM server and never imports it (docs/serve.md).
"""
