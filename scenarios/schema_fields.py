"""The fields :func:`~servesim.sim.arg_spec.derive_fields` adds to the scenario sections, as the
type checker sees them.

``scenarios/schema.py`` generates the engine, deployment and workload fields of its sections from
:class:`~servesim.sim.engine_args.EngineArgs` and :class:`~servesim.sim.workload.WorkloadSpec` at
import time; mypy cannot run that decorator, so each section has as its base, for the type
checker only, the matching ``...Declared`` class below (keyword-only fields, so their order is not
the type checker's concern): ``EngineKnobsFields`` and the others are those classes under
``TYPE_CHECKING`` and ``object`` at run time, so nothing is inherited or defined twice there.
``tests/test_scenarios_schema.py`` checks that each declares exactly the fields ``derive_fields``
adds, with the same types and the same required ones.
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any


def _derived() -> Any:
    """Stands for the default ``derive_fields`` gives the field (the source dataclass's)."""


@dataclass(frozen=True)
class EngineKnobsDeclared:
    """:class:`~servesim.scenarios.schema.EngineKnobs`: the ``knobs`` fields of EngineArgs."""

    _: KW_ONLY
    max_num_seqs: int | None = _derived()
    max_num_batched_tokens: int | None = _derived()
    max_model_len: int | None = _derived()
    block_size: int = _derived()
    gpu_memory_utilization: float = _derived()
    enable_chunked_prefill: bool | None = _derived()
    enable_prefix_caching: bool | None = _derived()
    num_gpu_blocks: int | None = _derived()
    preemption_mode: str = _derived()
    swap_space_gib: float = _derived()
    num_scheduler_steps: int | None = _derived()
    long_prefill_token_threshold: int = _derived()


@dataclass(frozen=True)
class DeploymentDeclared:
    """:class:`~servesim.scenarios.schema.Deployment`: the ``deployment`` fields of EngineArgs."""

    _: KW_ONLY
    model: str
    gpu: str = _derived()
    tp: int = _derived()
    engine: str = _derived()
    profile: str | None = _derived()
    weight_dtype: str | None = _derived()
    kv_cache_dtype: str = _derived()


@dataclass(frozen=True)
class WorkloadDeclared:
    """:class:`~servesim.scenarios.schema.WorkloadSection`: the ``workload`` fields of WorkloadSpec."""

    _: KW_ONLY
    num_requests: int | None = _derived()
    rate: float | None = _derived()
    burstiness: float | None = _derived()
    input_len: int = _derived()
    output_len: int = _derived()
    dataset: str = _derived()
    range_ratio: float = _derived()
    input_dist: str | None = _derived()
    output_dist: str | None = _derived()
    max_input_tokens: int | None = _derived()
    max_output_tokens: int | None = _derived()
    num_users: int | None = _derived()
    think_time_s: float = _derived()


@dataclass(frozen=True)
class ClusterGroupDeclared:
    """:class:`~servesim.scenarios.schema.ClusterGroupSection`: the deployment fields a group may
    override (``GROUP_OVERRIDES``), None: as the deployment."""

    _: KW_ONLY
    gpu: str | None = _derived()
    tp: int | None = _derived()
    profile: str | None = _derived()
    weight_dtype: str | None = _derived()
    kv_cache_dtype: str | None = _derived()


if TYPE_CHECKING:
    EngineKnobsFields = EngineKnobsDeclared
    DeploymentFields = DeploymentDeclared
    WorkloadFields = WorkloadDeclared
    ClusterGroupFields = ClusterGroupDeclared
else:  # the real sections get their fields from derive_fields, not from a base
    EngineKnobsFields = DeploymentFields = WorkloadFields = ClusterGroupFields = object

# Each scenario section (scenarios/schema.py) and the class declaring its derived fields.
DECLARED = {"EngineKnobs": EngineKnobsDeclared, "Deployment": DeploymentDeclared,
            "WorkloadSection": WorkloadDeclared, "ClusterGroupSection": ClusterGroupDeclared}

__all__ = ["DECLARED", "ClusterGroupDeclared", "ClusterGroupFields", "DeploymentDeclared", "DeploymentFields",
           "EngineKnobsDeclared", "EngineKnobsFields", "WorkloadDeclared", "WorkloadFields"]
