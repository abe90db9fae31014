"""Revenue, cost and profit of one replica at each point of a curve (docs/design.md, "Economics").

All rates are per hour of operation at the point's sustained throughput::

    revenue_per_h  = 3600 * (input_tps * price_in + output_tps * price_out) / 1e6
                   (or 3600 * billable_tps * per_1k_billable_tokens / 1000)
    fixed_per_h    = tp * (rental_per_gpu_hour  or  capex_per_gpu / (amortisation_years * 8760)
                           + (rack_power_delivery + facility + staff + other_fixed)_per_gpu_month / 730)
    energy_per_h   = tp * (mean_gpu_power_w + host_power_w_per_gpu) / 1000 * pue * energy_price_per_kwh
    variable_per_h = 3600 * total_tps * other_variable_per_1m_tokens / 1e6
    cost_per_h     = fixed_per_h + energy_per_h + variable_per_h ;  profit_per_h = revenue_per_h - cost_per_h

``input_tps``/``output_tps`` are the simulated input and output token throughputs (tokens/s over the
run's duration) and ``mean_gpu_power_w`` the profile's power model averaged over the run.
Everything here is a pure function of a curve DataFrame, so ``servesim regions`` can re-price a
finished sweep or a measured curve.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .schema import Costs, Economics, Prices

HOURS_PER_YEAR = 8760.0
HOURS_PER_MONTH = 730.0
ECONOMIC_COLUMNS = ("revenue_per_h", "fixed_cost_per_h", "energy_cost_per_h", "variable_cost_per_h",
                    "cost_per_h", "profit_per_h", "cost_per_1m_tokens", "revenue_per_1m_tokens")


def fixed_cost_per_gpu_hour(costs: Costs) -> float:
    """GPU ownership or rental plus the monthly fixed terms, per GPU-hour."""
    if costs.gpu_rental_per_gpu_hour is not None:
        gpu = costs.gpu_rental_per_gpu_hour
    elif costs.gpu_capex_per_gpu is not None:
        gpu = costs.gpu_capex_per_gpu / (costs.amortisation_years * HOURS_PER_YEAR)
    else:
        gpu = 0.0
    monthly = (costs.rack_power_delivery_per_gpu_month + costs.facility_per_gpu_month
               + costs.staff_per_gpu_month + costs.other_fixed_per_gpu_month)
    return gpu + monthly / HOURS_PER_MONTH


def revenue_per_hour(prices: Prices, input_tps: np.ndarray, output_tps: np.ndarray) -> np.ndarray:
    if prices.per_1k_billable_tokens is not None:
        billable = {"total": input_tps + output_tps, "output": output_tps, "input": input_tps}[prices.billable]
        return 3600.0 * billable * prices.per_1k_billable_tokens / 1e3
    return 3600.0 * (input_tps * prices.input_per_1m_tokens + output_tps * prices.output_per_1m_tokens) / 1e6


def add_economics(curve: pd.DataFrame, economics: Economics | None, tp: int | None = None) -> pd.DataFrame:
    """``curve`` with the columns of :data:`ECONOMIC_COLUMNS` (NaN when ``economics`` is None).

    Reads ``input_throughput``, ``output_throughput``, ``mean_gpu_power_w`` (0 when absent) and
    ``tensor_parallel_size`` (or ``tp``).
    """
    out = curve.copy()
    if economics is None or out.empty:
        for c in ECONOMIC_COLUMNS:
            out[c] = np.nan
        return out
    costs = economics.costs
    gpus = out["tensor_parallel_size"].to_numpy(dtype=float) if tp is None else np.full(len(out), float(tp))
    if "num_gpus_total" in out:  # cluster points (docs/cluster.md) pay for every GPU of the cluster
        total = out["num_gpus_total"].to_numpy(dtype=float)
        gpus = np.where(np.isnan(total), gpus, total)
    input_tps = out.get("input_throughput", pd.Series(0.0, index=out.index)).fillna(0).to_numpy(dtype=float)
    output_tps = out["output_throughput"].to_numpy(dtype=float)
    power = out.get("mean_gpu_power_w", pd.Series(0.0, index=out.index)).fillna(0).to_numpy(dtype=float)
    total_tps = input_tps + output_tps
    out["revenue_per_h"] = revenue_per_hour(economics.prices, input_tps, output_tps)
    out["fixed_cost_per_h"] = gpus * fixed_cost_per_gpu_hour(costs)
    out["energy_cost_per_h"] = (gpus * (power + costs.host_power_w_per_gpu) / 1e3 * costs.pue
                                * costs.energy_price_per_kwh)
    out["variable_cost_per_h"] = 3600.0 * total_tps * costs.other_variable_per_1m_tokens / 1e6
    out["cost_per_h"] = out["fixed_cost_per_h"] + out["energy_cost_per_h"] + out["variable_cost_per_h"]
    out["profit_per_h"] = out["revenue_per_h"] - out["cost_per_h"]
    million_per_h = np.where(total_tps > 0, 3600.0 * total_tps / 1e6, np.nan)
    out["cost_per_1m_tokens"] = out["cost_per_h"] / million_per_h
    out["revenue_per_1m_tokens"] = out["revenue_per_h"] / million_per_h
    return out
