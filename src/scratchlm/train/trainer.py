"""The one training loop, for pretraining and (in later work) every kind of fine-tuning.

What differs between kinds of training is only the batches (labels masked with -100 where
no loss is wanted), which parameters have requires_grad, and the loss function; the loop is
this one. A run directory holds:

    config.yaml      the resolved config of the run
    metrics.jsonl    one JSON line per log step: step, train_loss, val_loss, lr, grad_norm,
                     tokens_per_s, peak_mem_mib (largest rank; CUDA tensor memory on a GPU,
                     else peak RSS); also in tensorboard/ with train.report_to [jsonl, tensorboard]
    last/            model directory + trainer_state.pt: what --resume continues from
    best/            model directory with the lowest validation loss so far
    final/           model directory at the end of the run

What a checkpoint keeps is the `write_model` / `read_model` pair: by default a complete
model directory (modeldir.write_model_files); a LoRA run keeps only its adapter
(scratchlm.peft.write_adapter_files / read_adapter_weights).

Resume is exact: batches are a function of (seed, step, micro-step), dropout's RNG is
reseeded from (seed, rank, step) at every step, and the optimizer and step are restored, so
on CPU a resumed run ends bit-identical to an uninterrupted one, on one process or several.
SIGINT and SIGTERM stop the run at the next step boundary with a checkpoint
(scratchlm.train.interrupt); a run killed outright resumes from its last checkpoint, which a
kill can never leave half-swapped (fileio.atomic_dir, recovered by checkpoint.recover).

Under torchrun the same loop runs on every rank (scratchlm.train.distributed): the model is
wrapped by DDP or sharded by FSDP2, losses and token counts are averaged / summed over ranks,
and only rank 0 writes files or prints. A checkpoint does not depend on the number of
processes that wrote it: it resumes on any number whose per-process batch x processes is
the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from scratchlm.config import RunConfig, run_config_from_dict
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import atomic_dir, atomic_file, is_ours, mark_dir
from scratchlm.hardware import capabilities, describe
from scratchlm.interop import hf
from scratchlm.modeldir import load_state, write_model_files
from scratchlm.tokenizers import Tokenizer
from scratchlm.train import distributed
from scratchlm.train.checkpoint import load_trainer_state, recover, rng_state, save_checkpoint
from scratchlm.train.distributed import Dist
from scratchlm.train.interrupt import Aborted, Interrupted, StopRequest, signal_name
from scratchlm.train.optim import lr_at, make_optimizer
from scratchlm.train.report import TB_DIR, Reporter, check_report_to, truncate_metrics

Batch = dict[str, torch.Tensor]
BatchFn = Callable[[str, np.random.Generator], Batch]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]  # may also have on_step(step)
Validator = Callable[[torch.nn.Module], dict[str, float]]  # e.g. {"val_bleu": 23.4}
# What a checkpoint keeps: write a model's files into a directory; read them back into it.
ModelWriter = Callable[[Path, torch.nn.Module, Tokenizer], None]
ModelReader = Callable[[Path, torch.nn.Module], None]

# Train keys that may change on --resume without changing the result of the steps already run.
RESUMABLE_TRAIN_KEYS = {"max_steps", "eval_every", "save_every", "log_every", "eval_batches",
                        "device", "compile", "patience", "val_translate", "val_beam", "strategy",
                        "activation_checkpointing", "threads", "report_to"}
# batch_size may change too when processes change, as long as the global batch does not.
EVAL_STREAM = 0x5EED_E7A1  # a separate seed stream for the fixed validation batches
# What a run directory holds before its first checkpoint: such a run is simply started again.
EARLY_RUN_FILES = ("metrics.jsonl", "best", TB_DIR, "loss.png")


def lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over labels that are not -100."""
    logits = model(batch["input_ids"])  # (B, T, V)
    return F.cross_entropy(
        logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100
    )


def read_model_files(path: Path, model: torch.nn.Module) -> None:
    """Load the weights of a model directory written by write_model_files into `model`."""
    model.load_state_dict(hf.from_hf_state_dict(model.config, load_state(path / "model.safetensors")))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ScratchLMError(f"train.device={name} but CUDA is not available; use cpu or auto")
    return torch.device(name)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast only where it is fast: bf16 on CUDA that supports it, and on CPUs where bf16
    training is fast (`Capabilities.fast_bf16_training`: a measured fast bf16 GEMM, AMX or
    AVX-512 BF16). Elsewhere fp32: bf16 matmuls are ~100x slower on AVX2-only CPUs. Master
    weights and optimizer state stay fp32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and capabilities().fast_bf16_training:
            return torch.bfloat16
        return None
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class Trainer:
    def __init__(
        self,
        *,
        model: torch.nn.Module,
        config: RunConfig,
        tokenizer: Tokenizer,
        batches: BatchFn,
        out_dir: str | Path,
        loss_fn: LossFn = lm_loss,
        validate: Validator | None = None,
        show_progress: bool | None = None,
        write_model: ModelWriter = write_model_files,
        read_model: ModelReader = read_model_files,
        dist: Dist | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.train
        self.tokenizer = tokenizer
        self.batches = batches
        self.loss_fn = loss_fn
        self.validate = validate
        self.out = Path(out_dir)
        self.show_progress = show_progress
        self.write_model = write_model
        self.read_model = read_model
        self.dist = dist or Dist()
        if self.dist.enabled and validate is not None:
            raise ScratchLMError("validation by translation (BLEU/chrF) runs on one process; "
                                 "train seq2seq models without torchrun")
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        check_report_to(self.cfg.report_to)
        self.reporter: Reporter | None = None  # rank 0's, while fit runs
        self.device = resolve_device(distributed.device_of(self.dist, self.cfg.device))
        self.amp_dtype = autocast_dtype(self.cfg.dtype, self.device)
        # Under FSDP a weightless copy for writing full weights (taken while still on the CPU).
        self.exporter = distributed.Exporter(model, self.dist)
        self.model = model.to(self.device)
        if self.cfg.activation_checkpointing:
            from scratchlm.registry import blocks, families_with
            from scratchlm.train.finetune import enable_gradient_checkpointing

            if blocks(model) is None:
                raise ScratchLMError(f"train.activation_checkpointing supports the "
                                     f"{', '.join(families_with('blocks'))} families")
            enable_gradient_checkpointing(model)
        self.wrapped = distributed.wrap(model, self.dist, self.device)  # DDP / FSDP's module
        self.forward_model = self.wrapped
        if self.cfg.compile:
            distributed.check_compile(self.device)
            self.forward_model = torch.compile(self.wrapped)
        self.optimizer = make_optimizer(model, self.cfg, device_type=self.device.type)
        self.peak_flops = distributed.peak_flops(self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best_val = math.inf  # lowest validation loss
        self.best_score = -math.inf  # best train.best_metric, sign-flipped so higher is better
        self.bad_evals = 0  # evaluations since best_score last improved (early stopping)
        self.tokens_seen = 0  # target tokens (labels that are not -100) since the last log

    # ------------------------------------------------------------------ run directory
    def _prepare_run_dir(self, *, resume: bool) -> None:
        cfg_path = self.out / "config.yaml"
        if self.dist.is_main:
            recover(self.out)  # dead writers' temp files; a checkpoint swap a kill cut short
        self.dist.barrier()
        if resume:
            if not (self.out / "last").is_dir():
                early = cfg_path.is_file() and not (self.out / "final").exists()
                raise ScratchLMError(
                    f"{self.out} has no checkpoint (last/) to resume from"
                    + ("; it stopped before its first one: run the same command without "
                       "--resume to start it again" if early else ""))
            state = load_trainer_state(self.out / "last")
            self._check_compatible(cfg_path, state)
            self._load_checkpoint(self.out / "last", state)
        elif (self.out / "last").exists() or (self.out / "final").exists():
            raise ScratchLMError(
                f"{self.out} already holds a run; pass --resume to continue it, --overwrite to "
                "start over, or choose another --out"
            )
        elif any((self.out / n).exists() for n in EARLY_RUN_FILES):
            # Killed before its first checkpoint: nothing to continue, so it starts again.
            self.dist.barrier()  # every rank has looked before rank 0 clears
            if self.dist.is_main:
                print(f"{self.out} holds a run stopped before its first checkpoint: starting it again")
                clear_run_dir(self.out)
        self.dist.barrier()  # every rank has checked before rank 0 writes
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not is_ours(self.out):
                mark_dir(self.out)
            with atomic_file(cfg_path) as f:
                yaml.safe_dump(self.config.to_dict(), f, sort_keys=False)

    def _check_compatible(self, cfg_path: Path, state: dict[str, Any]) -> None:
        if not cfg_path.is_file():
            raise ScratchLMError(f"{cfg_path} is missing; cannot check the run can be resumed")
        old = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        old_cfg = run_config_from_dict({k: v for k, v in old.items() if k != "data"})
        new, old = self.config.to_dict(), old_cfg.to_dict()
        diffs = []
        for section in [s for s in {**old, **new} if s != "data"]:
            before, after = old.get(section) or {}, new.get(section) or {}
            for k in sorted(set(before) | set(after)):
                if section == "train" and (k in RESUMABLE_TRAIN_KEYS or k == "batch_size"):
                    continue
                if before.get(k) != after.get(k):
                    diffs.append(f"{section}.{k}")
        if diffs:
            raise ScratchLMError(
                f"cannot resume {self.out}: the config differs from the run's in {', '.join(diffs)} "
                f"(only {', '.join(sorted(RESUMABLE_TRAIN_KEYS))} may change)"
            )
        # The samples of a step depend on the global batch, not on how it is split.
        old_b = int(state.get("batch_size", (old.get("train") or {}).get("batch_size", 0)))
        old_w = int(state.get("world_size", 1))
        b, w = self.cfg.batch_size, self.dist.world
        if old_b * old_w != b * w:
            hint = (f"; on {w} process(es) pass --train.batch_size {old_b * old_w // w}"
                    if (old_b * old_w) % w == 0 else "")
            raise ScratchLMError(
                f"cannot resume {self.out}: its global batch is {old_b * old_w} sequences "
                f"(train.batch_size {old_b} x {old_w} process(es)), this run's is {b * w} "
                f"({b} x {w}){hint}")

    def _load_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        self.exporter.load_full(self.read_model, path)
        optim = state["optimizer"]
        legacy = any(isinstance(p, int) for g in optim["param_groups"] for p in g["params"])
        if legacy and self.dist.strategy != "fsdp":
            self.optimizer.load_state_dict(optim)  # a checkpoint from before names were kept
        else:
            self.exporter.load_optimizer_state(self.optimizer, optim)
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        # No RNG state to restore: each step reseeds from (seed, rank, step) (_step_seed).
        self.step = int(state["step"])
        self.best_val = float(state["best_val"])
        self.best_score = float(state.get("best_score", -self.best_val))
        self.bad_evals = int(state.get("bad_evals", 0))
        if self.dist.is_main:
            truncate_metrics(self.out / "metrics.jsonl", self.step)

    def _save_checkpoint(self) -> None:
        """Full weights and a name-keyed optimizer state, whatever the strategy: the same
        checkpoint resumes on any number of processes. Collective under FSDP."""
        optim = self.exporter.optimizer_state(self.optimizer)
        with self.exporter.full_model() as full:
            if full is not None:
                self._write_checkpoint(full, optim)

    def _write_checkpoint(self, full: torch.nn.Module, optim: dict[str, Any]) -> None:
        state = {
            "step": self.step,
            "optimizer": optim,
            "world_size": self.dist.world,
            "batch_size": self.cfg.batch_size,
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),  # for readers; the next step reseeds (_step_seed)
            "best_val": self.best_val,
            "best_score": self.best_score,
            "bad_evals": self.bad_evals,
            # The schedule is a pure function of the step (optim.lr_at); kept for readers.
            "lr": lr_at(max(self.step - 1, 0), self.cfg),
        }
        save_checkpoint(self.out / "last", model=full, tokenizer=self.tokenizer, state=state,
                        write=self.write_model)

    def _save_model(self, path: Path) -> None:
        """best/ and final/: what the checkpoint keeps, without the trainer state."""
        with self.exporter.full_model() as full:
            if full is not None:
                with atomic_dir(path) as tmp:
                    self.write_model(tmp, full, self.tokenizer)

    def _log(self, record: dict[str, Any]) -> None:
        if self.reporter is None:  # ranks > 0
            return
        path = self.out / "metrics.jsonl"
        if not path.is_file() or path.stat().st_size == 0:  # the first record: where it ran
            record = {**record, "hardware": capabilities().as_dict()}
        self.reporter.log(record)

    def _say(self, bar, message: str) -> None:
        if self.dist.is_main:
            bar.write(message)

    # ------------------------------------------------------------------ loop
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over `eval_batches` fixed validation batches (the same every time)."""
        self.model.eval()
        total = 0.0
        for i in range(self.cfg.eval_batches):
            rng = np.random.default_rng([self.cfg.seed, EVAL_STREAM, i])
            batch = self._to_device(self.batches("val", rng))
            with self._autocast():
                loss = self.loss_fn(self.forward_model, batch).float()
            weight = self.dist.token_weight(batch["labels"])
            total += float(loss if weight is None else self.dist.mean(loss * weight))
        self.model.train()
        return total / self.cfg.eval_batches

    def _evaluate_into(self, record: dict[str, Any], bar) -> float:
        """Validation loss (and the validator's metrics) into `record`; keep best/."""
        cfg = self.cfg
        val_loss = self.evaluate()
        record["val_loss"] = val_loss
        if self.validate is not None:
            self.model.eval()
            record.update(self.validate(self.model))
            self.model.train()
        extra = "".join(f", {k.replace('_', ' ')} {v:.2f}" for k, v in record.items()
                        if k.startswith("val_") and k != "val_loss")
        self._say(bar, f"step {self.step}: train loss {record['train_loss']:.4f}, val loss "
                  f"{val_loss:.4f}, val ppl {math.exp(min(val_loss, 50)):.2f}{extra}")
        self.best_val = min(self.best_val, val_loss)
        if cfg.best_metric not in record:
            raise ScratchLMError(f"train.best_metric is {cfg.best_metric}, which this run does not "
                                 "compute (val_bleu/val_chrf need seq2seq data and train.val_translate > 0)")
        score = -record[cfg.best_metric] if cfg.best_metric == "val_loss" else record[cfg.best_metric]
        if score > self.best_score:
            self.best_score, self.bad_evals = score, 0
            self._save_model(self.out / "best")
        else:
            self.bad_evals += 1
        return val_loss

    def _train_step(self, *, want_norm: bool = False) -> tuple[float, float | None]:
        """One optimizer step over grad_accum micro-batches; returns the mean loss and, when
        clipping or asked (log steps), the gradients' total norm before clipping."""
        cfg = self.cfg
        # Dropout's masks are a function of (seed, rank, step), like the batches: a resumed
        # run draws exactly what an uninterrupted one would, whatever happened in between.
        seed_dropout(self.device, _step_seed(cfg.seed, self.dist.rank, self.step))
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if hasattr(self.loss_fn, "on_step"):
            self.loss_fn.on_step(self.step)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            rng = np.random.default_rng([cfg.seed, self.step, micro])
            batch = self.batches("train", rng)  # this rank's rows of the global batch
            self.tokens_seen += int((batch["labels"] != -100).sum())  # on the CPU: no sync
            batch = self._to_device(batch)
            last = micro == cfg.grad_accum - 1
            weight = self.dist.token_weight(batch["labels"])  # None on one process
            with distributed.no_grad_sync(self.wrapped, self.dist, sync=last):
                with self._autocast():
                    loss = self.loss_fn(self.forward_model, batch) / cfg.grad_accum
                    if weight is not None:  # this rank's share of the global batch's tokens
                        loss = loss * weight
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        value = float(self.dist.mean(loss_sum))  # the same on every rank
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise ScratchLMError(
                f"loss became {value} at step {self.step + 1}; the weights of that step were not "
                f"applied. Lower train.lr (now {cfg.lr}) or check the data; the last good "
                f"checkpoint is in {self.out / 'last'}"
            )
        norm = None
        if cfg.grad_clip > 0 or want_norm:
            self.scaler.unscale_(self.optimizer)
            # max_norm inf: the norm only (the grads are multiplied by exactly 1.0).
            total = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            if want_norm:  # a DTensor under FSDP
                norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return value, norm

    def fit(self, *, resume: bool = False, until_step: int | None = None) -> dict[str, Any]:
        """Train to train.max_steps (or stop after `until_step`, as if interrupted there).
        Returns a summary: step, last train loss, best and last validation loss. Raises
        Interrupted on SIGINT/SIGTERM, after saving the step it was in (interrupt.py)."""
        cfg = self.cfg
        request = StopRequest(quiet=not self.dist.is_main)
        with request.installed():
            try:
                self._prepare_run_dir(resume=resume)
                if self.dist.is_main:
                    self.reporter = Reporter(self.out, cfg.report_to, start_step=self.step)
                summary = self._loop(request, cfg.max_steps if until_step is None
                                     else min(until_step, cfg.max_steps))
            except Aborted as e:
                last = self.out / "last"
                kept = f"{last} holds the last checkpoint" if last.is_dir() else "no checkpoint yet"
                raise Interrupted(
                    f"aborted by a third {signal_name(e.signum)} at step {self.step}: nothing more "
                    f"was saved; {kept}", signum=e.signum, step=self.step, saved=False) from None
            finally:
                if self.reporter is not None:
                    self.reporter.close()
                    self.reporter = None
        return summary

    def _stop_signal(self, request: StopRequest) -> int:
        """The signal that stops the run at this step boundary (0: none). Under torchrun the
        ranks agree (the largest of theirs), so all stop after the same step."""
        return int(self.dist.max_float(float(request.signum or 0), self.device))

    def _loop(self, request: StopRequest, stop: int) -> dict[str, Any]:
        cfg = self.cfg
        self.model.train()
        show = self.show_progress
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step",
                   disable=True if not self.dist.is_main else (None if show is None else not show),
                   dynamic_ncols=True)
        w = self.dist.world
        self._say(bar, f"global batch: {cfg.batch_size} per process x {cfg.grad_accum} grad_accum "
                       f"x {w} process{'es' if w > 1 else ''} = {cfg.batch_size * cfg.grad_accum * w} "
                       f"sequences per step ({self.dist.describe()}, {self.device}"
                       + (f", {torch.get_num_threads()} torch thread{'s' * (torch.get_num_threads() > 1)})"
                          if self.device.type == "cpu" else ")"))
        self._say(bar, f"{describe()}; training precision: {self.amp_dtype or torch.float32}")
        flops_per_token = (distributed.train_flops_per_token(self.model, self.config.model.block_size)
                           if self.peak_flops else 0.0)
        last_loss, val_loss = math.nan, math.nan
        t_log, steps_since = time.perf_counter(), 0
        try:
            while self.step < stop:
                log_step = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == stop
                last_loss, grad_norm = self._train_step(want_norm=log_step)
                steps_since += 1
                bar.update(1)
                record: dict[str, Any] | None = None
                if log_step:
                    dt = time.perf_counter() - t_log
                    tok_s = self.dist.sum_int(self.tokens_seen, self.device) / max(dt, 1e-9)
                    peak = self.dist.max_float(distributed.peak_memory_mib(self.device), self.device)
                    record = {"step": self.step, "train_loss": last_loss,
                              "lr": lr_at(self.step - 1, cfg), "grad_norm": grad_norm,
                              "tokens_per_s": round(tok_s, 1),
                              "peak_mem_mib": round(peak, 1)}  # the largest of any rank
                    postfix = {"loss": f"{last_loss:.4f}", "tok_s": f"{tok_s:,.0f}"}
                    if flops_per_token:  # model FLOPs utilisation of all the GPUs together
                        record["mfu"] = round(tok_s * flops_per_token / (self.peak_flops * w), 4)
                        postfix["mfu"] = f"{record['mfu']:.1%}"
                    bar.set_postfix(postfix)
                    t_log, steps_since, self.tokens_seen = time.perf_counter(), 0, 0
                stopping = False
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                    record = record or {"step": self.step, "train_loss": last_loss,
                                        "lr": lr_at(self.step - 1, cfg)}
                    val_loss = self._evaluate_into(record, bar)
                    stopping = cfg.patience > 0 and self.bad_evals >= cfg.patience
                    # Do not count evaluation time in tokens/s.
                    t_log, steps_since, self.tokens_seen = time.perf_counter(), 0, 0
                if record is not None:
                    self._log(record)
                saved = self.step % cfg.save_every == 0 or self.step == stop or stopping
                if saved:
                    self._save_checkpoint()
                signum = self._stop_signal(request)
                if signum:
                    if not saved:
                        self._save_checkpoint()
                    self.dist.barrier()  # saved before any rank leaves
                    raise Interrupted(
                        f"{signal_name(signum)}: stopped after step {self.step} of {cfg.max_steps}, "
                        f"saved in {self.out / 'last'}", signum=signum, step=self.step, saved=True)
                if stopping:
                    self._say(bar, f"early stop at step {self.step}: {cfg.best_metric} has not improved "
                              f"for {cfg.patience} evaluations (train.patience)")
                    break
            if self.step >= cfg.max_steps or (cfg.patience > 0 and self.bad_evals >= cfg.patience):
                self._save_model(self.out / "final")
        finally:
            bar.close()
        self.dist.barrier()  # the files are written before any rank returns
        return {"step": self.step, "train_loss": last_loss, "val_loss": val_loss,
                "best_val_loss": self.best_val}


def seed_dropout(device: torch.device, seed: int) -> None:
    """Seed the generators a step draws from: the CPU's and the device's own (torch.manual_seed
    seeds every backend and device: 5x slower here, a cost on every step of a small model)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):  # this device's generator, whichever is current
            torch.cuda.manual_seed(seed)
    elif device.type != "cpu":
        getattr(torch, device.type).manual_seed(seed)  # torch.mps, torch.xpu


def _step_seed(seed: int, rank: int, step: int) -> int:
    """Dropout's seed for one step of one rank: each rank its own masks, each step its own,
    independent of anything that ran before (so resuming cannot change them)."""
    return int(np.random.default_rng([seed, rank, step, 0xD0]).integers(2**62))


def clear_run_dir(path: str | Path) -> None:
    """Remove a previous run's outputs (for --overwrite)."""
    p = Path(path)
    for name in ("last", "best", "final", "metrics.jsonl", "config.yaml", "loss.png", TB_DIR):
        q = p / name
        if q.is_dir():
            shutil.rmtree(q)
        elif q.exists():
            q.unlink()
