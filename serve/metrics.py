"""``/metrics`` of ``servesim serve``: Prometheus text under vLLM's metric names.

State gauges and counters are read from the live engine at scrape time (a custom collector);
latency histograms are observed as tokens are produced.  All times are *simulated* seconds, what
vLLM would report on the simulated hardware (``--speed`` only changes how fast they pass).

Names follow the engine generation simulated:

* ``vllm-v1`` (vLLM 0.10+): ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc``, ``vllm:num_preemptions_total``, ``vllm:prompt_tokens_total``,
  ``vllm:generation_tokens_total``, ``vllm:request_success_total``, histograms
  ``vllm:time_to_first_token_seconds``, ``vllm:inter_token_latency_seconds``,
  ``vllm:e2e_request_latency_seconds``, ``vllm:request_queue_time_seconds``,
  ``vllm:request_prompt_tokens``, ``vllm:request_generation_tokens``,
  ``vllm:request_prefill_time_seconds``, ``vllm:request_decode_time_seconds``,
  ``vllm:request_inference_time_seconds``, ``vllm:iteration_tokens_total``,
  ``vllm:request_params_max_tokens``, counters ``vllm:prefix_cache_queries_total`` /
  ``vllm:prefix_cache_hits_total`` (tokens), and
  ``vllm:cache_config_info`` (labels carry ``num_gpu_blocks``, ``block_size``, ...); labels
  ``model_name`` and ``engine="0"``.
* ``vllm-v0`` (vLLM 0.5/0.6): the same, but ``vllm:gpu_cache_usage_perc`` /
  ``vllm:cpu_cache_usage_perc``, ``vllm:num_requests_swapped``, ``vllm:time_per_output_token_seconds``
  instead of the inter-token histogram, and the ``model_name`` label only.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# vLLM's bucket boundaries (vllm/v1/metrics/loggers.py; the v0 ones are close).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def build_1_2_5_buckets(max_value: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's ``build_1_2_5_buckets``)."""
    out: list[int] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            value = m * 10 ** exponent
            if value > max_value:
                return tuple(out)
            out.append(value)
        exponent += 1


class _StateCollector:
    """Gauges and counters read from :meth:`LiveEngine.state` at each scrape."""

    def __init__(self, live, labels: dict[str, str], v1: bool, cache_labels: dict[str, str]) -> None:
        self.live, self.labels, self.v1, self.cache_labels = live, labels, v1, cache_labels

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=list(self.labels))
        g.add_metric(list(self.labels.values()), value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=list(self.labels))
        c.add_metric(list(self.labels.values()), value)
        return c

    def collect(self):
        s = self.live.state()
        yield self._gauge("vllm:num_requests_running", "Number of requests in model execution batches.", s["running"])
        yield self._gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s["waiting"])
        if self.v1:
            yield self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s["kv_usage"])
        else:
            yield self._gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.", s["swapped"])
            yield self._gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
                              s["kv_usage"])
            yield self._gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.",
                              s["cpu_usage"])
        yield self._counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                            s["preemptions"])
        yield self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s["prompt_tokens"])
        yield self._counter("vllm:generation_tokens", "Number of generation tokens processed.",
                            s["generation_tokens"])
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=list(self.cache_labels))
        info.add_metric(list(self.cache_labels.values()), 1.0)
        yield info
        yield self._gauge("servesim:simulated_time_seconds", "Simulated seconds since the server started.",
                          s["sim_time_s"])


class ServeMetrics:
    """A per-server registry (no global state): histograms plus the state collector."""

    def __init__(self, live, model_name: str, v1: bool, cache_labels: dict[str, str],
                 max_model_len: int = 131072) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        labels = {"model_name": model_name, **({"engine": "0"} if v1 else {})}
        names, values = list(labels), list(labels.values())
        self.registry.register(_StateCollector(live, labels, v1, cache_labels))

        def hist(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, names, registry=self.registry, buckets=buckets).labels(*values)

        self.ttft = hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                         TTFT_BUCKETS)
        itl_name = "vllm:inter_token_latency_seconds" if v1 else "vllm:time_per_output_token_seconds"
        self.itl = hist(itl_name, "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                        E2E_BUCKETS)
        self.queue = hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase.",
                          E2E_BUCKETS)
        self.prompt = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS)
        self.generation = hist("vllm:request_generation_tokens", "Number of generation tokens processed.",
                               TOKEN_BUCKETS)
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          names + ["finished_reason"], registry=self.registry)
        self.success = {reason: success.labels(*values, reason) for reason in ("stop", "length", "abort")}
        phase = "Histogram of time spent in {} phase for request."
        self.prefill_time = hist("vllm:request_prefill_time_seconds", phase.format("PREFILL"), E2E_BUCKETS)
        self.decode_time = hist("vllm:request_decode_time_seconds", phase.format("DECODE"), E2E_BUCKETS)
        self.inference_time = hist("vllm:request_inference_time_seconds", phase.format("RUNNING"), E2E_BUCKETS)
        self.iteration_tokens = hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                                     ITERATION_TOKEN_BUCKETS)
        self.max_tokens = hist("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
                               build_1_2_5_buckets(max_model_len))
        self.prefix_queries = Counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of "
                                      "queried tokens.", names, registry=self.registry).labels(*values)
        self.num_prefix_queries = self.num_prefix_hits = 0
        self.prefix_hits = Counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached "
                                   "tokens.", names, registry=self.registry).labels(*values)

    def first_token(self, request, now: float) -> None:
        self.ttft.observe(now - request.arrival_time)
        if request.first_scheduled_time >= 0:
            self.queue.observe(request.first_scheduled_time - request.arrival_time)
            self.prefill_time.observe(now - request.first_scheduled_time)
        self.prefix_queries.inc(request.num_prompt_tokens)
        self.prefix_hits.inc(request.num_cached_tokens)
        self.num_prefix_queries += request.num_prompt_tokens
        self.num_prefix_hits += request.num_cached_tokens

    def submitted(self, max_tokens: int) -> None:
        self.max_tokens.observe(max_tokens)

    def step(self, out, seconds: float) -> None:
        """One engine step (an engine observer's ``on_step``): its scheduled tokens."""
        self.iteration_tokens.observe(out.num_tokens)

    def aborted(self, request) -> None:
        self.success["abort"].inc()

    def token_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def finished(self, request, now: float, reason: str = "length") -> None:
        self.e2e.observe(now - request.arrival_time)
        self.prompt.observe(request.num_prompt_tokens)
        self.generation.observe(request.num_output_tokens)
        if request.first_scheduled_time >= 0:
            self.inference_time.observe(now - request.first_scheduled_time)
        if request.first_token_time >= 0:
            self.decode_time.observe(now - request.first_token_time)
        self.success[reason].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
