"""What-if scenarios: demand sweeps, the A/B/C operating regions, profit, reports and planning.

* :mod:`.schema` / :mod:`.loader`: the YAML scenario schema as frozen dataclasses, validated on load;
* :mod:`.points`: one sweep point (replica + workload -> one curve row);
* :mod:`.sweep`: every point x seed in parallel (local processes or Dask), resumable;
* :mod:`.economics`: revenue, cost and profit per point;
* :mod:`.regions`: the region rules (equilibrium, saturation, break-even, maximum profit, SLO limit);
* :mod:`.advice`, :mod:`.plots`, :mod:`.report`: advice, figures, ``report.html`` / ``report.md``;
* :mod:`.measured`: measured sweeps read into the same curve;
* :mod:`.plan`: the capacity planner; :mod:`.cli`: ``servesim sweep | regions | plan``.

Documentation: ``docs/scenarios.md``.
"""
