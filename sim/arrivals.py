"""Arrival processes of ``vllm bench serve``: a burst, Poisson, and gamma (burstiness) arrivals,
each a pure function of its arguments and one ``numpy.random.Generator``."""
from __future__ import annotations

import math

import numpy as np


def burst_arrivals(n: int) -> np.ndarray:
    """All ``n`` requests at t = 0, like ``vllm bench serve --request-rate inf``."""
    return np.zeros(n, dtype=np.float64)


def gamma_arrivals(n: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Arrivals with gamma gaps, as ``vllm bench serve --request-rate R --burstiness B``.

    Gaps have shape ``burstiness`` and scale ``1 / (rate * burstiness)``: mean ``1 / rate`` s and
    coefficient of variation ``1 / sqrt(burstiness)``; 1 is Poisson, < 1 burstier, ``inf`` evenly
    spaced.  Request 0 is sent at t = 0 and request k after k gaps (vLLM's ``get_request`` yields
    a request, then sleeps one gap).  ``rate = inf`` is a burst; ``n - 1`` gaps are drawn.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s (inf for a burst), got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0 (1 = Poisson, inf = even gaps), got {burstiness}")
    if math.isinf(rate) or n == 0:
        return burst_arrivals(n)
    if math.isinf(burstiness):
        gaps = np.full(n - 1, 1.0 / rate)
    else:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))


def poisson_arrivals(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals at ``rate`` requests/s; identical to ``gamma_arrivals(n, rate, 1, rng)``."""
    return gamma_arrivals(n, rate, 1.0, rng)
