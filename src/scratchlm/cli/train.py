"""Pretrain a model on prepared data:
`scratchlm train --data DATA_DIR --out RUN_DIR [--config FILE.yaml] [--section.key VALUE ...] [--resume]`.

Overrides are dotted keys, e.g. `--model.n_layer 6 --train.lr 3e-4 --model.family gpt`.
With --resume and no --config, the run's own config.yaml is the starting point.

On several processes or GPUs, launch the same command under torchrun (docs/scaling.md):
`torchrun --standalone --nproc_per_node 4 -m scratchlm train ... --train.strategy ddp|fsdp`;
train.batch_size is then per process, and only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import torch

from scratchlm.config import load_run_config
from scratchlm.data.pairs import PairData, is_pairs_dir
from scratchlm.data.pretrain import TokenData
from scratchlm.errors import ScratchLMError
from scratchlm.eval.plot import plot_run
from scratchlm.eval.translation import validator
from scratchlm.fileio import claim_out_dir
from scratchlm.registry import build_model, is_encoder_decoder
from scratchlm.train import distributed, init_from
from scratchlm.train.interrupt import Interrupted
from scratchlm.train.seq2seq import Seq2SeqLoss
from scratchlm.train.trainer import Trainer, clear_run_dir

HELP = "train a model (config YAML + --section.key VALUE overrides)"
ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data directory from `scratchlm prepare` (sets data.dir)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", help="YAML recipe, e.g. configs/demo.yaml")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last/")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in --out first")


def report_done(out: Path, summary: dict, say=print) -> Path:
    """After a run (train or finetune): plot its loss curves and say how it ended."""
    png = plot_run(out)
    say(f"done: step {summary['step']}, train loss {summary['train_loss']:.4f}, "
        f"val loss {summary['val_loss']:.4f} (best {summary['best_val_loss']:.4f})")
    return png


def resume_command(argv: list[str], d: distributed.Dist, *, resume: bool = True) -> str:
    """The command that continues a stopped run: this one with --resume and without
    --overwrite (under torchrun with as many processes when it ran there)."""
    words = [a for a in argv if a not in ("--overwrite", "--resume")] + ["--resume"] * resume
    head = (["torchrun", "--standalone", f"--nproc_per_node={d.world}", "-m", "scratchlm"]
            if d.enabled else ["scratchlm"])
    return shlex.join(head + words)


def stopped(e: Interrupted, argv: list[str], out: Path, d: distributed.Dist) -> int:
    """A run stopped by SIGINT/SIGTERM (train and finetune): one line saying how to go on,
    and exit status 128 + the signal (130, 143)."""
    if d.is_main:
        if (out / "last").is_dir():
            print(f"{e}; resume with: {resume_command(argv, d)}", file=sys.stderr)
        else:  # stopped before its first checkpoint: the same command starts it again
            print(f"{e}; start it again with: {resume_command(argv, d, resume=False)}",
                  file=sys.stderr)
    return e.exit_code


def run(args: argparse.Namespace, extra: list[str]) -> int:
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise ScratchLMError("--resume and --overwrite contradict each other; pick one")
    config_path = args.config
    if args.resume and not config_path and (out / "config.yaml").is_file():
        config_path = out / "config.yaml"
    cfg = load_run_config(config_path, overrides=extra)
    argv = ["train", *(["--data", args.data] if args.data else []), "--out", args.out,
            *(["--config", args.config] if args.config else []), *extra]
    return distributed.run(cfg.train.strategy, cfg.train.device,
                           lambda d: _run(args, cfg, out, d, argv))


def _run(args: argparse.Namespace, cfg, out: Path, d: distributed.Dist, argv: list[str]) -> int:
    say = print if d.is_main else (lambda *a, **k: None)
    if d.is_main and not args.resume:
        # A marked run directory is reused: the Trainer starts a run that stopped before its
        # first checkpoint again, and refuses (naming --resume) one that has a checkpoint.
        claim_out_dir(out, overwrite=args.overwrite, kind="run directory", reuse=True,
                      inputs=[args.data or cfg.data.dir, cfg.train.init_from])
    d.barrier()
    if args.data:
        cfg.data.dir = args.data
    if not cfg.data.dir:
        raise ScratchLMError("no data: pass --data DATA_DIR (from `scratchlm prepare`)")
    if is_pairs_dir(cfg.data.dir):
        if d.enabled:
            raise ScratchLMError("seq2seq (parallel pairs) training runs on one process for now; "
                                 "launch it without torchrun")
        data, trainer_kwargs = _seq2seq_setup(cfg)
    else:
        if is_encoder_decoder(cfg.model):
            raise ScratchLMError(
                f"model.family {cfg.model.family} is an encoder-decoder: it trains on parallel "
                f"pairs, and {cfg.data.dir} holds plain text (prepare pairs with `scratchlm "
                "prepare DATASET_DIR --out DIR`, or use a decoder-only family: gpt, llama, rnn)"
            )
        data = TokenData(cfg.data.dir)
        trainer_kwargs = {}
    tokenizer = data.tokenizer()
    if cfg.train.init_from:  # continued training: the data must speak the source's tokens
        init_from.check_tokenizer(tokenizer, data_dir=cfg.data.dir, source=cfg.train.init_from)
        tokenizer = init_from.load_source(cfg.train.init_from)[1]  # keeps its chat template
    if cfg.model.vocab_size == 0:
        cfg.model = dataclasses.replace(cfg.model, vocab_size=data.vocab_size)
    elif cfg.model.vocab_size < data.vocab_size:
        raise ScratchLMError(
            f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the data's vocabulary "
            f"({data.vocab_size}); leave it at 0 to take the data's"
        )
    if not trainer_kwargs:
        data.check_block_size(cfg.model.block_size)
    if args.overwrite and d.is_main:
        clear_run_dir(out)
    d.barrier()  # no rank looks at --out before it is cleared
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    if cfg.train.init_from and not args.resume:  # (a resumed run reads its own checkpoint)
        init_from.load_into(model, cfg.train.init_from)
        say(f"initialised from {cfg.train.init_from} (fresh optimizer and schedule)")
    m = cfg.model
    shape = ", ".join(f"{k} {getattr(m, k)}" for k in ("cell", "attention", "n_layer", "n_head",
                                                     "n_kv_head", "d_model")
                      if getattr(m, k, None) is not None)
    if trainer_kwargs:
        size = f"{data.num_pairs('train'):,} train pairs"
    else:
        size = f"{len(data.splits['train']):,} train tokens"
    say(f"model: {m.family}, {model.num_params() / 1e6:.2f}M parameters ({shape}, "
          f"context {m.block_size}); data: {data.dir} ({size})")
    if not trainer_kwargs:
        block = m.block_size
        trainer_kwargs["batches"] = lambda split, rng: data.batch(
            split, batch_size=cfg.train.batch_size, block_size=block, rng=rng,
            rank=d.rank, world=d.world)
    trainer = Trainer(model=model, config=cfg, tokenizer=tokenizer, out_dir=out, dist=d,
                      **trainer_kwargs)
    try:
        summary = trainer.fit(resume=args.resume)
    except Interrupted as e:
        return stopped(e, argv, out, d)
    if not d.is_main:
        return 0
    png = report_done(out, summary)
    print(f"model directory: {out / 'final'}; loss curve: {png}")
    if is_encoder_decoder(cfg.model):
        print(f"translate with:  scratchlm translate {out / 'final'} --src \"...\" --num-beams 5")
    else:
        print(f"generate with:  scratchlm generate {out / 'final'} --prompt \"...\" --max-new-tokens 200")
    return 0


def _seq2seq_setup(cfg) -> tuple[PairData, dict]:
    """Parallel pairs: the seq2seq loss (label smoothing, scheduled sampling), batches of
    similar lengths, and BLEU/chrF on the first train.val_translate val pairs."""
    if not is_encoder_decoder(cfg.model):
        raise ScratchLMError(
            f"{cfg.data.dir} holds parallel pairs; train an encoder-decoder on it "
            f"(--model.family seq2seq_rnn or seq2seq_transformer), not {cfg.model.family}"
        )
    data = PairData(cfg.data.dir)
    t = cfg.train
    if max(data.max_len("train")) > cfg.model.block_size:
        raise ScratchLMError(
            f"{data.dir} has sequences of up to {max(data.max_len('train'))} tokens but "
            f"model.block_size is {cfg.model.block_size}; raise it or prepare with a smaller --max-len"
        )
    kwargs = {
        "batches": lambda split, rng: data.batch(split, batch_size=t.batch_size, rng=rng),
        "loss_fn": Seq2SeqLoss(t),
    }
    if t.val_translate > 0:
        pairs = data.texts("val")[: t.val_translate]
        kwargs["validate"] = validator(data.tokenizer(), pairs, beam=t.val_beam,
                                       lang=data.meta.get("tgt_lang"))
    elif t.best_metric != "val_loss":
        raise ScratchLMError(f"train.best_metric {t.best_metric} needs train.val_translate > 0")
    return data, kwargs
