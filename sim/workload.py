"""Workloads: where simulated requests come from.

:class:`WorkloadSpec` is the one description of a workload: the command line
(``servesim/cli.py``), the scenario schema's workload section (``scenarios/schema.py``) and
calibration build it.  :func:`build_workload` turns it and a seed into the request stream the
engine consumes: a :class:`Workload` (open loop) or a :class:`ClosedLoop`
(:mod:`servesim.sim.request_streams`, re-exported here).

Building blocks, each a pure function of its arguments and one ``numpy.random.Generator``:

* lengths (:mod:`servesim.sim.lengths`): :func:`fixed_lengths`, :func:`random_lengths` (vLLM's
  ``random`` dataset), :func:`sample_lengths` (a parametric :class:`LengthDist`), and
  :func:`~servesim.sim.traces.sharegpt_lengths`; all re-exported here;
* arrivals (:mod:`servesim.sim.arrivals`): :func:`burst_arrivals`, :func:`poisson_arrivals`,
  :func:`gamma_arrivals` (the arrival processes of ``vllm bench serve``), re-exported here.

:func:`build_workload` turns a :class:`WorkloadSpec` and a seed into a workload.  Randomness comes
from :func:`spawn_streams`: ``SeedSequence(seed).spawn(3)`` gives one independent generator per
source (arrivals, lengths, think time), so changing the arrival rate never changes the sampled
lengths, and changing the length dataset never changes the arrival times.
File loaders live in :mod:`servesim.sim.traces`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from . import traces
from .arg_spec import arg, check_fields
from .arrivals import burst_arrivals, gamma_arrivals, poisson_arrivals  # noqa: F401 (re-exported)
from .clients import ClientKind, ClientModel, client_preset  # noqa: F401 (re-exported)
from .lengths import DistKind, LengthDist, _enum, first_turn_lengths, fixed_lengths, random_lengths, sample_lengths  # noqa: F401 (re-exported)
from .request_streams import ClosedLoop, Streams, ThinkTimeDist, Workload, spawn_streams  # noqa: F401 (re-exported)
from .traces import sharegpt_lengths  # noqa: F401 (re-exported)

# ---------------------------------------------------------------------------------------- specs


class WorkloadKind(str, Enum):
    """Where a :class:`WorkloadSpec` gets its arrivals from."""

    BURST = "burst"
    POISSON = "poisson"
    GAMMA = "gamma"
    CLOSED = "closed"
    TRACE = "trace"
    BENCH_JSON = "bench_json"


class Dataset(str, Enum):
    """Where a synthetic :class:`WorkloadSpec` gets its lengths from."""

    FIXED = "fixed"        # exactly input_len / output_len
    RANDOM = "random"      # vLLM's random dataset around input_len / output_len (range_ratio)
    SHAREGPT = "sharegpt"  # first-turn prompts as vllm bench serve sends them (shipped table)
    SHAREGPT_CONVERSATIONS = "sharegpt-conversations"  # whole conversations (sarathi's table, shared data)
    DIST = "dist"          # input_dist / output_dist, LengthDist text forms


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything :func:`build_workload` needs besides the seed.

    Synthetic kinds (burst, poisson, gamma, closed) need ``num_requests`` and take lengths from
    ``dataset`` (None = fixed).  poisson needs ``rate``; gamma needs ``rate`` and takes
    ``burstiness`` (None = 1); burst and closed ignore both.  ``trace`` loads ``trace_path``
    (format detected unless ``trace_kind``), keeping its first ``num_requests`` rows and
    rescaling by ``time_scale`` or to ``rate`` when given.  ``bench_json`` replays the lengths of
    a ``vllm bench serve`` result with arrivals at ``rate`` / ``burstiness`` (None = the values
    recorded in the file).  ``closed`` builds a :class:`ClosedLoop` for ``num_users`` users,
    driven as ``client`` drives them (default: the ideal client); its ``num_warmup_requests`` are
    sent before the ``num_requests`` counted ones.
    """

    kind: WorkloadKind
    num_requests: int | None = arg(None, flags=("--num-requests",), section="workload", unit="requests", lo=0,
                                   help="requests to simulate")
    rate: float | None = arg(None, section="workload", unit="requests/s", lo=0.0, lo_open=True, allow_inf=True,
                             help="mean arrival rate (inf: a burst; simulate: --rate, --bench-rate)")
    burstiness: float | None = arg(None, flags=("--burstiness",), section="workload", lo=0.0, lo_open=True,
                                   allow_inf=True, help="gamma shape of the inter-arrival gaps (1 = Poisson)")
    input_len: int = arg(1024, flags=("--input-len",), section="workload", unit="tokens", lo=1, hi=10_000_000,
                         help="prompt length (fixed; the centre for random)")
    output_len: int = arg(128, flags=("--output-len",), section="workload", unit="tokens", lo=1, hi=10_000_000,
                          help="output length (fixed; the centre for random)")
    dataset: Dataset | None = arg(None, flags=("--dataset",), section="workload",
                                  choices=tuple(d.value for d in Dataset),
                                  help="where lengths come from: fixed --input-len/--output-len, vLLM-style random "
                                       "around them, sharegpt (first-turn prompts as `vllm bench serve "
                                       "--dataset-name sharegpt` sends them), sharegpt-conversations (whole "
                                       "conversations; table in ../shared/data) or dist (--input-dist/--output-dist)",
                                  omitted="fixed")
    range_ratio: float = arg(0.0, flags=("--range-ratio",), section="workload", lo=0.0, hi=1.0, hi_open=True,
                             help="random dataset: lengths uniform in [len * (1 - r), len * (1 + r)]")
    input_dist: str | None = arg(None, flags=("--input-dist",), section="workload", validator=LengthDist.parse,
                                 help="dataset dist: prompt lengths, e.g. lognormal:900:0.5")
    output_dist: str | None = arg(None, flags=("--output-dist",), section="workload", validator=LengthDist.parse,
                                  help="dataset dist: output lengths, e.g. uniform:50:500")
    max_input_tokens: int | None = arg(None, flags=("--max-input-tokens",), section="workload", unit="tokens", lo=1,
                                       help="sharegpt datasets: drop longer prompts")
    max_output_tokens: int | None = arg(None, flags=("--max-output-tokens",), section="workload", unit="tokens",
                                        lo=1, help="sharegpt datasets: drop longer outputs")
    trace_path: str | None = None
    trace_kind: str | None = None
    time_scale: float | None = arg(None, flags=("--time-scale",), unit="x", lo=0.0, lo_open=True,
                                   help="multiply a trace's inter-arrival gaps")
    num_users: int | None = arg(None, section="workload", unit="users", lo=1, help="closed loop: concurrent users (simulate: --concurrency)")
    think_time_s: float = arg(0.0, flags=("--think-time",), section="workload", unit="s", lo=0.0,
                              help="closed loop: mean think time between a user's requests")
    think_time_dist: ThinkTimeDist = ThinkTimeDist.EXPONENTIAL
    name: str | None = None
    client: ClientModel = ClientModel()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _enum(WorkloadKind, self.kind, "kind"))
        object.__setattr__(self, "dataset", _enum(Dataset, self.dataset or Dataset.FIXED, "dataset"))
        check_fields(self)
        k = self.kind
        if k in (WorkloadKind.TRACE, WorkloadKind.BENCH_JSON):
            if not self.trace_path:
                raise ValueError(f"kind={k.value} needs trace_path")
        elif self.num_requests is None or self.num_requests < 0:
            raise ValueError(f"kind={k.value} needs num_requests >= 0, got {self.num_requests}")
        if k in (WorkloadKind.POISSON, WorkloadKind.GAMMA) and self.rate is None:
            raise ValueError(f"kind={k.value} needs rate (requests/s; inf for a burst)")
        if k is WorkloadKind.CLOSED and not self.num_users:
            raise ValueError("kind=closed needs num_users >= 1")
        if self.dataset is Dataset.DIST and not (self.input_dist and self.output_dist):
            raise ValueError("dataset=dist needs input_dist and output_dist, e.g. 'lognormal:900:0.5'")


# The WorkloadSpec fields that say where the lengths of synthetic requests come from.
LENGTH_FIELDS = ("dataset", "input_len", "output_len", "range_ratio", "input_dist", "output_dist", "max_input_tokens",
                 "max_output_tokens")


def _lengths(spec: WorkloadSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic (input, output) lengths of ``spec``, all drawn from ``rng``."""
    if spec.dataset is Dataset.RANDOM:
        return random_lengths(n, spec.input_len, spec.output_len, spec.range_ratio, rng)
    if spec.dataset is Dataset.SHAREGPT:
        return first_turn_lengths(n, rng, max_input=spec.max_input_tokens, max_output=spec.max_output_tokens)
    if spec.dataset is Dataset.SHAREGPT_CONVERSATIONS:
        return sharegpt_lengths(n, rng, max_input=spec.max_input_tokens,
                                max_output=spec.max_output_tokens)
    if spec.dataset is Dataset.DIST:
        assert spec.input_dist is not None and spec.output_dist is not None
        return sample_lengths(n, spec.input_dist, rng), sample_lengths(n, spec.output_dist, rng)
    return fixed_lengths(n, spec.input_len, spec.output_len)


def build_workload(spec: WorkloadSpec, seed: int = 0) -> Workload | ClosedLoop:
    """The workload ``spec`` describes; the same (spec, seed) always gives the same arrays.

    Arrivals come only from stream ``arrivals`` and lengths only from stream ``lengths`` of
    :func:`spawn_streams`, so e.g. two specs differing only in ``rate`` share their lengths.
    """
    streams = spawn_streams(seed)
    name = spec.name or spec.kind.value
    # WorkloadSpec.__post_init__ checked the fields each kind needs; the asserts state it for mypy.
    if spec.kind is WorkloadKind.TRACE:
        assert spec.trace_path is not None
        return traces.load_trace(spec.trace_path, kind=spec.trace_kind, limit=spec.num_requests,
                                 time_scale=spec.time_scale, rate=spec.rate, name=spec.name)
    if spec.kind is WorkloadKind.BENCH_JSON:
        assert spec.trace_path is not None
        return traces.load_bench_json(spec.trace_path, rate=spec.rate, burstiness=spec.burstiness,
                                      seed=seed, limit=spec.num_requests, name=spec.name)
    assert spec.num_requests is not None
    n = int(spec.num_requests)
    if spec.kind is WorkloadKind.CLOSED:
        n += spec.client.num_warmup_requests
    inputs, outputs = _lengths(spec, n, streams.lengths)
    if spec.kind is WorkloadKind.CLOSED:
        assert spec.num_users is not None
        return ClosedLoop(spec.num_users, inputs, outputs, spec.think_time_s, spec.think_time_dist,
                          seed, name, spec.client)
    if spec.kind is WorkloadKind.BURST:
        arrivals = burst_arrivals(n)
    else:
        gamma = spec.kind is WorkloadKind.GAMMA and spec.burstiness is not None
        burstiness = spec.burstiness if gamma and spec.burstiness is not None else 1.0
        assert spec.rate is not None
        arrivals = gamma_arrivals(n, spec.rate, burstiness, streams.arrivals)
    return Workload(arrivals, inputs, outputs, name)
