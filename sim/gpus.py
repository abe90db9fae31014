"""GPU specifications: memory, bandwidth, peak FLOP/s, power and interconnect.

Numbers are vendor datasheet values (dense, no sparsity) unless a comment says otherwise;
``memory_bytes`` is the total memory CUDA reports (``cudaMemGetInfo``, what vLLM's
``gpu_memory_utilization`` multiplies), which is less than the marketing size and than nvidia-smi's
total; it is taken from real vLLM start-up logs where they exist (H100 SXM, H200, A100 80GB) and is
nvidia-smi's figure for the other GPUs (an over-estimate of a few hundred MiB).

The catalogue :data:`GPU_CATALOG` is keyed by canonical name (``h100-sxm``, ``a100-80gb``, ...);
:func:`get_gpu` also accepts the names other tools print, e.g. ``nvidia-smi``'s
"NVIDIA H100 80GB HBM3" or Splitwise's "h100-80gb".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_MIB = 1024 ** 2
_GB = 1e9
_TB = 1e12
_TFLOPS = 1e12

INTERCONNECTS = ("nvlink", "pcie")


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model.  All rates are per GPU; FLOP/s are dense tensor-core peaks.

    Invariants (checked at construction): every quantity is positive, ``idle_w < tdp_w``,
    ``fp8_flops >= bf16_flops`` and ``interconnect`` is one of :data:`INTERCONNECTS`.
    """

    name: str
    memory_bytes: float
    hbm_bandwidth_bytes_per_s: float
    bf16_flops: float
    fp8_flops: float
    tdp_w: float
    idle_w: float
    interconnect_bandwidth_bytes_per_s: float  # per GPU, one direction (NVLink, or PCIe if none)
    interconnect: str = "nvlink"
    source: str = ""

    def __post_init__(self) -> None:
        for field_name in ("memory_bytes", "hbm_bandwidth_bytes_per_s", "bf16_flops", "fp8_flops",
                           "tdp_w", "idle_w", "interconnect_bandwidth_bytes_per_s"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"gpu {self.name}: {field_name} must be > 0")
        if self.idle_w >= self.tdp_w:
            raise ValueError(f"gpu {self.name}: idle_w ({self.idle_w}) must be < tdp_w ({self.tdp_w})")
        if self.fp8_flops < self.bf16_flops:
            raise ValueError(f"gpu {self.name}: fp8_flops must be >= bf16_flops")
        if self.interconnect not in INTERCONNECTS:
            raise ValueError(f"gpu {self.name}: interconnect {self.interconnect!r} not in {INTERCONNECTS}")

    def flops(self, dtype: str) -> float:
        """Peak dense tensor FLOP/s for a weight/activation dtype (fp8/int8 use the fp8 peak)."""
        return self.fp8_flops if dtype.lower() in ("fp8", "int8", "fp8_e4m3", "fp8_e5m2") else self.bf16_flops


# ----- catalogue ---------------------------------------------------------------------------
# Datasheets: "NVIDIA H100 Tensor Core GPU" datasheet (SXM / PCIe / NVL columns), "NVIDIA H200
# Tensor Core GPU" datasheet, "NVIDIA A100 Tensor Core GPU" datasheet, "NVIDIA DGX B200"
# datasheet (8-GPU totals divided by 8), "NVIDIA L40S GPU" datasheet.  Datasheets quote tensor
# FLOP/s "with sparsity"; the dense peaks below are half of those.  Interconnect figures are per
# direction: NVLink4 900 GB/s bidirectional = 450 GB/s each way.

H100_SXM = GPUSpec(
    name="h100-sxm",
    # What CUDA reports (cudaMemGetInfo total, which vLLM multiplies by gpu_memory_utilization):
    # 79.19 GiB in all 59 successful vLLM 0.19 start-up logs of ../shared/data/kv_capacity
    # ("worker init memory snapshot: ... total_memory=79.19GiB"); 81090 MiB rounds to it.  nvidia-smi
    # shows 81559 MiB (the driver keeps ~470 MiB); the aiconfigurator yaml uses the nominal 80 GiB.
    memory_bytes=81090 * _MIB,
    hbm_bandwidth_bytes_per_s=3.35 * _TB,     # datasheet; aiconfigurator h100_sxm.yaml mem_bw
    bf16_flops=989 * _TFLOPS,                 # datasheet 1,979 TF sparse; h100_sxm.yaml 989 TF
    fp8_flops=1979 * _TFLOPS,                 # datasheet 3,958 TF sparse; h100_sxm.yaml 1978 TF
    tdp_w=700,                                # datasheet max TDP; h100_sxm.yaml power: 700
    idle_w=75,                                # Splitwise configs_power_model_constant.yaml
    interconnect_bandwidth_bytes_per_s=450 * _GB,  # NVLink4; h100_sxm.yaml intra_node_bw
    interconnect="nvlink",
    source="NVIDIA H100 datasheet (SXM); aiconfigurator h100_sxm.yaml; Splitwise power constants",
)

H100_NVL = GPUSpec(
    name="h100-nvl",
    # 94 GB HBM3; nvidia-smi reports 95830 MiB on "NVIDIA H100 NVL".
    memory_bytes=95830 * _MIB,
    hbm_bandwidth_bytes_per_s=3.9 * _TB,
    bf16_flops=835 * _TFLOPS,                 # datasheet 1,671 TF sparse
    fp8_flops=1671 * _TFLOPS,                 # datasheet 3,341 TF sparse
    tdp_w=400,                                # datasheet: 350-400 W configurable; upper end
    idle_w=50,                                # estimate (no cited measurement)
    # NVLink bridge between pairs: 600 GB/s bidirectional = 300 GB/s each way.
    interconnect_bandwidth_bytes_per_s=300 * _GB,
    interconnect="nvlink",
    source="NVIDIA H100 datasheet (NVL column)",
)

H100_PCIE = GPUSpec(
    name="h100-pcie",
    memory_bytes=81559 * _MIB,                # 80 GB HBM2e; nvidia-smi total (CUDA total not measured here)
    hbm_bandwidth_bytes_per_s=2.0 * _TB,
    bf16_flops=756 * _TFLOPS,                 # datasheet 1,513 TF sparse
    fp8_flops=1513 * _TFLOPS,                 # datasheet 3,026 TF sparse
    tdp_w=350,
    idle_w=50,                                # estimate (no cited measurement)
    interconnect_bandwidth_bytes_per_s=64 * _GB,   # PCIe 5.0 x16, one direction
    interconnect="pcie",
    source="NVIDIA H100 datasheet (PCIe column)",
)

H200 = GPUSpec(
    name="h200",
    # 141 GB HBM3e; nvidia-smi reports 143771 MiB on "NVIDIA H200", CUDA 139.81 GiB (vLLM v0 log
    # "total_gpu_memory" of an 8x H200 start-up, kv_capacity record 90); 143165 MiB rounds to it.
    memory_bytes=143165 * _MIB,
    hbm_bandwidth_bytes_per_s=4.8 * _TB,
    bf16_flops=989 * _TFLOPS,                 # same compute die as H100 SXM
    fp8_flops=1979 * _TFLOPS,
    tdp_w=700,
    idle_w=75,                                # estimate: H100 SXM's Splitwise figure, same board class
    interconnect_bandwidth_bytes_per_s=450 * _GB,  # NVLink4
    interconnect="nvlink",
    source="NVIDIA H200 datasheet (SXM column)",
)

A100_80GB = GPUSpec(
    name="a100-80gb",
    # nvidia-smi shows 81920 MiB on "NVIDIA A100-SXM4-80GB"; CUDA reports 79.15 GiB (Unsloth/vLLM
    # banner "max memory: 79.15 GB", kv_capacity record 112); 81050 MiB rounds to it.
    memory_bytes=81050 * _MIB,
    hbm_bandwidth_bytes_per_s=2.039 * _TB,
    bf16_flops=312 * _TFLOPS,
    # Ampere has no fp8 tensor cores.  vLLM runs fp8 checkpoints on Ampere as weight-only fp8
    # (Marlin, W8A16) with bf16 math, so the fp8 peak is the bf16 peak.  (int8 W8A8 could reach
    # the 624 TOPS int8 peak; this model does not distinguish.)
    fp8_flops=312 * _TFLOPS,
    tdp_w=400,
    idle_w=63,                                # Splitwise configs_power_model_constant.yaml
    interconnect_bandwidth_bytes_per_s=300 * _GB,  # NVLink3: 600 GB/s bidirectional
    interconnect="nvlink",
    source="NVIDIA A100 datasheet (SXM 80GB); Splitwise power constants",
)

A100_40GB = GPUSpec(
    name="a100-40gb",
    memory_bytes=40536 * _MIB,                # nvidia-smi on "NVIDIA A100-SXM4-40GB"
    hbm_bandwidth_bytes_per_s=1.555 * _TB,
    bf16_flops=312 * _TFLOPS,
    fp8_flops=312 * _TFLOPS,                  # no fp8: see A100_80GB
    tdp_w=400,
    idle_w=55,                                # estimate: a little below the 80GB part's 63 W
    interconnect_bandwidth_bytes_per_s=300 * _GB,
    interconnect="nvlink",
    source="NVIDIA A100 datasheet (SXM 40GB)",
)

B200 = GPUSpec(
    name="b200",
    # 180 GB usable HBM3e on HGX/DGX B200 (192 GB physical).  Driver total 183359 MiB is an
    # estimate from reported nvidia-smi output, not verified on hardware here.
    memory_bytes=183359 * _MIB,
    hbm_bandwidth_bytes_per_s=8.0 * _TB,
    bf16_flops=2250 * _TFLOPS,                # DGX B200: 36 PF bf16 sparse / 8 GPUs / 2
    fp8_flops=4500 * _TFLOPS,                 # DGX B200: 72 PF fp8 sparse / 8 GPUs / 2
    tdp_w=1000,
    idle_w=100,                               # estimate: ~10% of TDP, as H100 SXM (75 / 700 W)
    interconnect_bandwidth_bytes_per_s=900 * _GB,  # NVLink5: 1.8 TB/s bidirectional
    interconnect="nvlink",
    source="NVIDIA DGX B200 / HGX B200 datasheet",
)

L40S = GPUSpec(
    name="l40s",
    memory_bytes=46068 * _MIB,                # 48 GB GDDR6 (ECC on); nvidia-smi on "NVIDIA L40S"
    hbm_bandwidth_bytes_per_s=864 * _GB,      # GDDR6, not HBM; the field name is shared
    bf16_flops=362 * _TFLOPS,                 # datasheet 733 TF sparse
    fp8_flops=733 * _TFLOPS,                  # datasheet 1,466 TF sparse
    tdp_w=350,
    idle_w=35,                                # estimate (no cited measurement)
    interconnect_bandwidth_bytes_per_s=32 * _GB,   # PCIe 4.0 x16, one direction; no NVLink
    interconnect="pcie",
    source="NVIDIA L40S datasheet",
)

GPU_CATALOG: dict[str, GPUSpec] = {
    gpu.name: gpu for gpu in (H100_SXM, H100_NVL, H100_PCIE, H200, A100_80GB, A100_40GB, B200, L40S)
}

# Other spellings, already normalised by :func:`_normalize`, mapped to canonical names.
GPU_ALIASES: dict[str, str] = {
    "h100": "h100-sxm", "h100-sxm5": "h100-sxm", "h100-80gb": "h100-sxm",
    "h100-80gb-hbm3": "h100-sxm", "h100-sxm5-80gb": "h100-sxm",
    "h100-nvl-94gb": "h100-nvl",
    "h100-pcie-80gb": "h100-pcie",
    "h200-sxm": "h200", "h200-141gb": "h200", "h200-sxm-141gb": "h200",
    "a100": "a100-80gb", "a100-sxm4-80gb": "a100-80gb", "a100-sxm-80gb": "a100-80gb",
    "a100-sxm4-40gb": "a100-40gb", "a100-sxm-40gb": "a100-40gb",
    "b200-sxm": "b200", "b200-180gb": "b200",
}


def _normalize(name: str) -> str:
    """Lower case, "nvidia" dropped, runs of spaces/underscores/dashes made one dash."""
    key = re.sub(r"[\s_\-]+", "-", name.strip().lower())
    key = re.sub(r"^nvidia-", "", key)
    return key.strip("-")


def list_gpus() -> list[str]:
    """Canonical GPU names, sorted."""
    return sorted(GPU_CATALOG)


def get_gpu(name: str) -> GPUSpec:
    """The :class:`GPUSpec` for a canonical name or alias (case-insensitive).

    Raises ``ValueError`` naming the input and the valid names when nothing matches.
    """
    key = _normalize(name)
    key = GPU_ALIASES.get(key, key)
    try:
        return GPU_CATALOG[key]
    except KeyError:
        raise ValueError(f"unknown GPU {name!r}; valid: {list_gpus()} "
                         f"(aliases: {sorted(GPU_ALIASES)})") from None


# ----- links between replicas (KV transfer of prefill/decode disaggregation) ----------------
@dataclass(frozen=True)
class LinkSpec:
    """A GPU-to-GPU path a request's KV can take between replicas, per GPU and one direction.

    ``latency_s`` is the fixed cost of one transfer (setup and first byte); the rest moves at
    ``bandwidth_bytes_per_s``.  These are hardware peaks: no efficiency factor is applied, so
    transfer times are a lower bound.  Invariant: both are > 0.
    """

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float
    source: str = ""

    def __post_init__(self) -> None:
        if not (self.bandwidth_bytes_per_s > 0 and self.latency_s > 0):
            raise ValueError(f"link {self.name}: bandwidth and latency must be > 0")


LINK_CATALOG: dict[str, LinkSpec] = {link.name: link for link in (
    # Within a node: NVLink4, 900 GB/s bidirectional per H100 SXM = 450 GB/s each way (H100
    # datasheet).  Latency: NVLink hop is sub-microsecond; a one-sided copy's setup is a few us
    # (NCCL's point-to-point small-message latency on H100 NVLink is ~ 2-5 us).
    LinkSpec("nvlink", 450 * _GB, 3e-6, "NVIDIA H100 datasheet (NVLink4 900 GB/s bidirectional); NCCL p2p latency"),
    # Between nodes: one ConnectX-7 NDR 400 Gb/s InfiniBand port per GPU, as in DGX H100 (DGX H100
    # user guide), = 50 GB/s each way; the inter-node path Splitwise (Patel et al., ISCA 2024)
    # assumes for H100 prompt/token machines.  RDMA write latency ~ 5 us through one switch.
    LinkSpec("infiniband", 50 * _GB, 5e-6, "NVIDIA DGX H100 user guide (8x ConnectX-7 NDR 400 Gb/s); "
             "Splitwise ISCA 2024"),
    # Host-staged or PCIe peer copies: PCIe 5.0 x16, 64 GB/s each way (PCI-SIG 5.0 spec,
    # 32 GT/s x16 with 128b/130b coding ~ 63 GB/s); ~10 us for a DMA setup through the host.
    LinkSpec("pcie", 64 * _GB, 10e-6, "PCI-SIG PCIe 5.0 x16 (32 GT/s); H100 datasheet PCIe Gen5 128 GB/s bidirectional"),
)}


def get_link(name: str) -> LinkSpec:
    """The :class:`LinkSpec` named ``name`` (``nvlink``, ``infiniband``, ``pcie``)."""
    key = {"ib": "infiniband", "nvlink4": "nvlink"}.get(name.strip().lower(), name.strip().lower())
    try:
        return LINK_CATALOG[key]
    except KeyError:
        raise ValueError(f"unknown link {name!r}; valid: {sorted(LINK_CATALOG)}") from None


__all__ = ["GPUSpec", "GPU_CATALOG", "GPU_ALIASES", "INTERCONNECTS", "LINK_CATALOG", "LinkSpec", "get_gpu",
           "get_link", "list_gpus"]
