"""The engine's observer protocol (sim/observers.py) and request outcomes as statuses.

Observers see what the records see: every request ends once, as finished, rejected or aborted,
with that outcome in ``request.status``; ``on_step`` sees every step the engine takes (a bulk run
of decode steps as one :class:`DecodeRun`), and their times add up to the engine's busy time.
"""
from __future__ import annotations

import numpy as np
import pytest
import simpy
from conftest import build_engine, tiny_config

from servesim.sim.decode_batch import DecodeRun
from servesim.sim.engine import LLMEngine
from servesim.sim.metrics import RequestRecords
from servesim.sim.observers import CallbackObserver, EngineObserver
from servesim.sim.request import RequestStatus
from servesim.sim.runner import make_source
from servesim.sim.workload import Workload


class Log(EngineObserver):
    def __init__(self) -> None:
        self.ends: dict[int, RequestStatus] = {}
        self.steps: list[tuple[object, float, float]] = []
        self.closed: float | None = None

    def on_step(self, output, start_s, end_s):
        self.steps.append((output, start_s, end_s))

    def on_finish(self, request, now):
        assert request.request_id not in self.ends
        self.ends[request.request_id] = request.status

    def on_reject(self, request, now, reason):
        assert request.request_id not in self.ends and reason
        self.ends[request.request_id] = request.status

    def on_close(self, end_s):
        self.closed = end_s


def _engine(cfg, wl, exact=False, observers=(), sample_interval_s=0.05):
    source = make_source(wl, cfg)
    records = RequestRecords(len(source))
    env = simpy.Environment()
    return env, LLMEngine(env, cfg, source, records, sample_interval_s, exact, observers=observers), records


@pytest.mark.parametrize("exact", [False, True])
def test_observers_see_every_end_and_every_step(exact):
    cfg = tiny_config("vllm-v1", num_gpu_blocks=200, max_num_seqs=16, max_num_batched_tokens=64, max_model_len=256)
    rng = np.random.default_rng(0)
    n = 40
    prompts = rng.integers(10, 120, n)
    prompts[[3, 17]] = 250  # prompt + max_tokens > max_model_len: rejected as the API server would
    wl = Workload(np.sort(rng.uniform(0, 0.5, n)), prompts, rng.integers(20, 80, n))
    log = Log()
    env, engine, records = _engine(cfg, wl, exact, [log])
    env.run()
    frame = records.to_frame()
    want = {"finished": RequestStatus.FINISHED, "rejected": RequestStatus.FINISHED_REJECTED}
    assert log.ends == {i: want[s] for i, s in enumerate(frame.status.astype(str))}
    assert sorted(frame.status.astype(str)[[3, 17]]) == ["rejected", "rejected"]
    assert sum(getattr(o, "num_steps", 1) for o, _, _ in log.steps) == engine.num_steps
    assert sum(e - s for _, s, e in log.steps) == pytest.approx(engine.busy_s, rel=1e-12)
    assert all(e > s for _, s, e in log.steps)
    runs = [o for o, _, _ in log.steps if type(o) is DecodeRun]
    assert (len(runs) > 0) is (not exact)  # the fast path takes decode runs at once
    assert all(o.num_steps >= 2 for o in runs)
    assert log.closed == pytest.approx(frame.finish_s.max())


def test_abort_records_the_request_as_aborted_and_frees_its_blocks():
    cfg = tiny_config("vllm-v1", num_gpu_blocks=100, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256)
    wl = Workload(np.zeros(3), np.array([40, 40, 40]), np.array([100, 100, 100]))
    aborted = []
    env, engine, records = _engine(cfg, wl, observers=[CallbackObserver(on_abort=lambda r, now: aborted.append(
        (r.request_id, r.status)))])
    free_at_start = engine.kv.num_free_blocks

    def client():
        yield env.timeout(0.05)
        assert engine.abort(1)
        assert not engine.abort(1)  # already gone
        assert not engine.abort(99)

    env.process(client())
    env.run()
    assert aborted == [(1, RequestStatus.FINISHED_ABORTED)]
    assert records.to_frame().status.astype(str).tolist() == ["finished", "aborted", "finished"]
    assert engine.kv.num_free_blocks == free_at_start


def test_token_observer_takes_the_exact_path_and_sees_every_token():
    cfg = tiny_config("vllm-v1", num_gpu_blocks=200, max_num_seqs=16, max_num_batched_tokens=64)
    wl = Workload(np.zeros(4), np.array([30, 20, 10, 5]), np.array([9, 30, 12, 7]))
    tokens: dict[int, int] = {}
    obs = CallbackObserver(on_token=lambda r, now: tokens.__setitem__(r.request_id, tokens.get(r.request_id, 0) + 1))
    env, engine, records = _engine(cfg, wl, observers=[obs])
    assert engine.scheduler.exact
    env.run()
    assert tokens == {0: 9, 1: 30, 2: 12, 3: 7}
    engine.add_observer(CallbackObserver(on_token=print))  # fine: this engine is exact already
    _, fast, _ = _engine(cfg, wl)
    with pytest.raises(ValueError, match="observers="):
        fast.add_observer(CallbackObserver(on_token=print))


def test_engine_without_records_or_series_runs_and_says_so():
    cfg = tiny_config("vllm-v1")
    wl = Workload(np.zeros(2), np.array([10, 10]), np.array([5, 5]))
    log = Log()
    env = simpy.Environment()
    engine = LLMEngine(env, cfg, make_source(wl, cfg), None, sample_interval_s=None, observers=[log])
    env.run()
    assert engine.num_finished == 2 and set(log.ends.values()) == {RequestStatus.FINISHED}
    with pytest.raises(AttributeError, match="sample_interval_s=None"):
        engine.series  # noqa: B018


def test_unknown_hook_is_refused():
    with pytest.raises(TypeError, match="on_stpe"):
        CallbackObserver(on_stpe=print)


def test_build_engine_still_fills_records_and_series():
    cfg = tiny_config("vllm-v1")
    env, engine, records = build_engine(cfg, Workload(np.zeros(2), np.array([10, 10]), np.array([5, 5])))
    env.run()
    assert (records.status == 1).all() and len(engine.series.rows) > 0
