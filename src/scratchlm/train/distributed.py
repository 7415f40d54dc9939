"""Training on several processes with PyTorch's own engine: torch.distributed, DDP and FSDP2.

Launch the ordinary commands under torchrun; each process is one rank:

    torchrun --standalone --nproc_per_node 2 -m scratchlm train --data D --out R --train.strategy ddp

The process group's backend is chosen from the device: NCCL on CUDA, gloo on CPU. Rank r
of world W uses `cuda:LOCAL_RANK` on a GPU machine. Strategies (`train.strategy`):

- none: one process, no process group (the default without torchrun: `auto`).
- ddp:  DistributedDataParallel. Every rank holds the whole model and optimizer; gradients
        are averaged with an all-reduce during backward (Li et al. 2020).
- fsdp: FSDP2 (`torch.distributed.fsdp.fully_shard`), one unit per Transformer block plus
        the root. Parameters, gradients and optimizer state are sharded across ranks (as in
        ZeRO-3, Rajbhandari et al. 2020); a block's parameters are all-gathered just before
        its forward/backward and freed after.
- auto: none on one process, ddp when launched with several.

Data: every rank draws the same *global* batch indices from (seed, step, micro-step) and
keeps only its own rows (`rows_of`), so W ranks with batch B see exactly the samples one
process with batch W*B sees, and the losses they average are the same numbers. A rank
reads (through a memmap) only the windows of its own rows, never the whole corpus.

Checkpoints are always written in one portable form: a normal model directory with full
(unsharded) weights and an optimizer state keyed by parameter name, so a run saved by N
processes resumes on M (including 1) and `last/`, `best/`, `final/` load like any other
model directory. Only rank 0 writes files; all ranks take part in gathering FSDP shards.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from scratchlm.errors import ScratchLMError

STRATEGIES = ("auto", "none", "ddp", "fsdp")


@dataclass
class Dist:
    """Where this process stands: its rank among `world` processes and the strategy."""

    strategy: str = "none"  # none | ddp | fsdp (auto resolved)
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None  # gloo | nccl; None without a process group

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        if not self.enabled:
            return "1 process"
        return f"{self.world} processes, strategy {self.strategy}, backend {self.backend}"

    # ---------------------------------------------------------------- collectives
    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar tensor over ranks (itself on one process)."""
        if not self.enabled:
            return value
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world

    def token_weight(self, labels: torch.Tensor) -> torch.Tensor | None:
        """W x (this rank's target tokens) / (all ranks' target tokens), as a tensor on the
        labels' device (no host sync). A rank's mean loss times this weight, averaged over
        ranks, is the mean over every target token of the global batch: exactly the loss of
        one process, even when ranks hold different numbers of labelled tokens (SFT).
        None on one process."""
        if not self.enabled:
            return None
        mine = (labels != -100).sum().to(torch.float32)
        total = mine.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return mine * self.world / total.clamp_min(1.0)

    def sum_int(self, value: int, device: torch.device) -> int:
        if not self.enabled:
            return value
        t = torch.tensor(float(value), device=device, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return int(t.item())

    def max_float(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor(value, device=device, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def launched_world() -> int:
    """How many processes torchrun (or another launcher) started; 1 when run plainly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(strategy: str, device_name: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT) and say what this rank is. Idempotent."""
    if strategy not in STRATEGIES:
        raise ScratchLMError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    world = launched_world()
    if world == 1:
        # ddp/fsdp on one process: the same training, nothing to shard or average.
        return Dist(strategy="none")
    if strategy == "none":
        raise ScratchLMError(f"launched with {world} processes but train.strategy is none; pass "
                             "--train.strategy ddp or fsdp (or auto)")
    strategy = "ddp" if strategy == "auto" else strategy
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise ScratchLMError(f"train.device={device_name} but CUDA is not available; use cpu or auto")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ScratchLMError(f"local rank {local_rank} has no GPU: this node has "
                                 f"{torch.cuda.device_count()}; lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # A peer that dies mid-collective is seen by torchrun, which stops every rank; the
        # timeout only bounds a hang that nobody notices.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return Dist(strategy=strategy, rank=rank, world=world, local_rank=local_rank, backend=backend)


def device_of(d: Dist, device_name: str) -> str:
    """train.device for this rank: its own GPU on a CUDA run."""
    if d.backend == "nccl":
        return f"cuda:{d.local_rank}"
    if d.backend == "gloo" and device_name == "auto":
        return "cpu"
    return device_name


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def named_errors(d: Dist) -> Iterator[None]:
    """On several processes, say which rank an error a user can read came from."""
    try:
        yield
    except ScratchLMError as e:
        if d.enabled:
            raise ScratchLMError(f"rank {d.rank} of {d.world}: {e}") from None
        raise


def run(strategy: str, device_name: str, body: Callable[[Dist], int]) -> int:
    """A command's body on this rank: join the group, name the rank in errors, leave."""
    d = setup(strategy, device_name)
    try:
        with named_errors(d):
            return body(d)
    finally:
        teardown()


# -------------------------------------------------------------------------- data
def rows_of(global_rows: int, d: Dist) -> slice:
    """The rows of a global batch that rank d.rank trains on: a contiguous 1/W of them
    (when W does not divide the rows, the first ranks take one more)."""
    if global_rows < d.world:
        raise ScratchLMError(f"a batch of {global_rows} rows cannot be split over {d.world} "
                             "processes; use more data or fewer processes")
    per, extra = divmod(global_rows, d.world)
    start = d.rank * per + min(d.rank, extra)
    return slice(start, start + per + (d.rank < extra))


def shard_batch(batch: dict[str, torch.Tensor], d: Dist) -> dict[str, torch.Tensor]:
    """This rank's rows of a global batch (for data already in memory, e.g. SFT)."""
    if not d.enabled:
        return batch
    n = next(iter(batch.values())).shape[0]
    rows = rows_of(n, d)
    return {k: v[rows] for k, v in batch.items()}


# -------------------------------------------------------------------------- model
def _shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards separately: each Transformer block (the root takes the rest)."""
    from scratchlm.registry import blocks

    found = blocks(model) if hasattr(model, "config") else None
    return list(found) if found is not None else []


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The module the training loop calls: DDP around the model, or the model itself with
    its parameters sharded in place by FSDP2 (`model` keeps working as the same object)."""
    if not d.enabled:
        return model
    with torch.no_grad():  # every rank starts from rank 0's weights
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
    if d.strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for unit in _shard_units(model):
        fully_shard(unit)
    fully_shard(model)
    return model


@contextlib.contextmanager
def no_grad_sync(forward_model: nn.Module, d: Dist, *, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on micro-steps that are not the last
    of an accumulation (the last one communicates the accumulated sum once)."""
    if not d.enabled or sync:
        yield
    elif d.strategy == "ddp":
        with forward_model.no_sync():
            yield
    else:
        forward_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            forward_model.set_requires_gradient_sync(True)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are on the meta device: the structure
    (LoRA layers, tied weights, config) without copying a single weight."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


class Exporter:
    """Full weights for writing a model directory (on rank 0), and reading them back.

    DDP and one process: the model itself holds full weights. FSDP: a weightless (meta)
    copy of the model is taken before sharding; at save time the shards are gathered into
    it on rank 0 and freed again after writing."""

    def __init__(self, model: nn.Module, d: Dist) -> None:
        self.model, self.d = model, d
        self.shadow = _meta_copy(model) if d.strategy == "fsdp" else None

    def _options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=self.d.enabled)

    @contextlib.contextmanager
    def full_model(self) -> Iterator[nn.Module | None]:
        """The model with full weights on rank 0 (None elsewhere). Collective under FSDP."""
        if self.shadow is None:
            yield self.model if self.d.is_main else None
            return
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.model, options=self._options())
        if not self.d.is_main:
            yield None
            return
        self.shadow.load_state_dict(state, assign=True)
        try:
            yield self.shadow
        finally:
            self.shadow.to("meta")

    def load_full(self, read: Any, path: Any) -> None:
        """Read a model directory's weights (`read(path, module)`) into the model; under
        FSDP every rank reads the files (they must be on a file system all nodes see)."""
        if self.shadow is None:
            read(path, self.model)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            set_model_state_dict,
        )

        full = StateDictOptions(full_state_dict=True)
        # Start from the current weights: `read` may set only some (a LoRA run's adapter).
        self.shadow.load_state_dict(get_model_state_dict(self.model, options=full), assign=True)
        read(path, self.shadow)
        set_model_state_dict(self.model, self.shadow.state_dict(), options=full)
        self.shadow.to("meta")

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The optimizer state keyed by parameter name, full tensors, on rank 0."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(self.model, optimizer, options=self._options())
        return state if self.d.is_main else None

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(self.model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))


def check_compile(device: torch.device) -> None:
    """torch.compile's CPU backend (inductor) writes and builds C++: say so when it cannot."""
    if device.type == "cpu":
        import shutil

        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            raise ScratchLMError(
                f"train.compile on CPU needs a C++ compiler ({cxx} was not found; install g++ or "
                "set CXX), or leave train.compile false")


# -------------------------------------------------------------------------- speed
# Dense bf16 peak FLOP/s of common GPUs (vendor data sheets, no sparsity), for MFU.
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
    "GH200": 989e12, "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12,
    "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
}


def peak_memory_mib(device: torch.device) -> float:
    """This process's peak memory so far: CUDA memory allocated by tensors on a GPU, else
    the resident set size's high-water mark (everything: Python, torch, data, tensors)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak, or None when unknown (or on CPU): no MFU is shown then."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():  # longest names first within a family
        if key in name:
            return flops
    return None


def train_flops_per_token(model: nn.Module, block_size: int) -> float:
    """6 N (forward + backward matmuls) + 12 L T d (attention scores and values), per token,
    as in PaLM's MFU (Chowdhery et al. 2022, appendix B); N excludes position embeddings."""
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "wpe" not in name)
    layers = getattr(cfg, "n_layer", 0)
    width = getattr(cfg, "d_model", 0)
    return 6.0 * n + 12.0 * layers * block_size * width
