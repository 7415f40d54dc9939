"""Fine-tune a model directory on instruction / chat data (SFT), with LoRA or fully:
`scratchlm finetune MODEL_DIR --data FILE --out RUN_DIR [--method lora|full] [--val-data FILE]
[--config FILE.yaml] [--section.key VALUE ...] [--resume] [--overwrite]`.

Data: Alpaca JSON/JSONL (instruction, input, output), chat JSONL ({"messages": [...]}, loss
on assistant turns only) or {"prompt", "completion"}; chats use the model's chat template.
Overrides, e.g. `--lora.r 16 --lora.alpha 32 --lora.targets q_proj,v_proj --lora.rslora true
--train.lr 1e-4 --finetune.packing true --finetune.max_len 256 --finetune.gradient_checkpointing
true --finetune.freeze_layers 2` (sections train, lora, finetune; see configs/finetune-lora.yaml).

A LoRA run's last/, best/ and final/ hold only the adapter, in PEFT's format
(adapter_config.json + adapter_model.safetensors) with the tokenizer: `scratchlm generate
RUN/final --chat ...` loads it on its base model, `scratchlm merge-lora RUN --out DIR` writes
a merged model directory. A full run's are model directories.

Under torchrun (`torchrun --nproc_per_node N -m scratchlm finetune ... --train.strategy
ddp|fsdp`) every rank reads the (small) SFT file, draws the same global batch of
train.batch_size x N rows and trains on its own N-th of them; see docs/scaling.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from scratchlm.cli.train import report_done, stopped
from scratchlm.config import load_yaml, parse_overrides, run_config_from_dict
from scratchlm.data.sft import SFTData, load_examples, split_examples
from scratchlm.errors import ScratchLMError
from scratchlm.fileio import claim_out_dir, is_ours, mark_dir
from scratchlm.modeldir import load, read_model_config
from scratchlm.peft import trainable_summary
from scratchlm.registry import families_with, get_family
from scratchlm.tokenizers.chat import training_template
from scratchlm.train import distributed
from scratchlm.train.finetune import adapter_io, prepare_model, sft_loss
from scratchlm.train.interrupt import Interrupted
from scratchlm.train.trainer import Trainer, clear_run_dir

HELP = "fine-tune a model directory on SFT data (LoRA or full)"
ACCEPTS_OVERRIDES = True

# Fine-tuning defaults, under a recipe's and the command line's values.
TRAIN_DEFAULTS = {"max_steps": 200, "batch_size": 8, "warmup_steps": 10, "weight_decay": 0.0,
                  "eval_every": 50, "eval_batches": 10, "save_every": 50, "log_every": 5}
LR_DEFAULTS = {"lora": 2e-4, "full": 2e-5}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the model directory to fine-tune")
    p.add_argument("--data", help="SFT file (JSON or JSONL); sets finetune.data")
    p.add_argument("--val-data", help="validation file; default: hold out finetune.val_fraction")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--method", choices=("lora", "full"), help="sets finetune.method (default lora)")
    p.add_argument("--config", help="YAML recipe, e.g. configs/finetune-lora.yaml")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last/")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in --out first")


def _run_config(args: argparse.Namespace, extra: list[str], out: Path):
    """The run's config: fine-tuning defaults < recipe (or the run's own config.yaml on
    --resume) < --section.key overrides < the flags; the model section is MODEL_DIR's."""
    own = args.resume and not args.config and (out / "config.yaml").is_file()
    data = load_yaml(out / "config.yaml" if own else args.config) if (own or args.config) else {}
    overrides = parse_overrides(extra)
    if "model" in overrides or (data.get("model") and not own):
        raise ScratchLMError("finetune takes the model (and its config) from MODEL_DIR; "
                             "remove the model section / --model.* options")
    data.pop("model", None)
    data.pop("data", None)
    ft = overrides.setdefault("finetune", {})
    if args.method:
        ft["method"] = args.method
    if args.data:
        ft["data"] = str(Path(args.data).resolve())
    if args.val_data:
        ft["val_data"] = str(Path(args.val_data).resolve())
    ft["base"] = str(Path(args.model_dir).resolve())
    method = ft.get("method") or (data.get("finetune") or {}).get("method") or "lora"
    if method == "full" and (overrides.get("lora") or data.get("lora")):
        raise ScratchLMError("lora.* settings apply to --method lora, not full")
    train = {**TRAIN_DEFAULTS, "lr": LR_DEFAULTS.get(method, LR_DEFAULTS["lora"]),
             **(data.get("train") or {})}
    merged = {"train": train, "finetune": data.get("finetune") or {}}
    if method == "lora":
        merged["lora"] = data.get("lora") or {}
    cfg = run_config_from_dict(merged, overrides)
    cfg.model = read_model_config(args.model_dir)
    return cfg


def run(args: argparse.Namespace, extra: list[str]) -> int:
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise ScratchLMError("--resume and --overwrite contradict each other; pick one")
    cfg = _run_config(args, extra, out)
    if not args.resume:  # a run killed before its first checkpoint may simply start again
        unstarted = not any((out / n).exists() for n in ("last", "best", "final"))
        claim_out_dir(out, overwrite=args.overwrite, reuse=unstarted and is_ours(out),
                      inputs=[args.model_dir, cfg.finetune.data, cfg.finetune.val_data],
                      kind="run directory")
    argv = ["finetune", args.model_dir, *(["--data", args.data] if args.data else []),
            *(["--val-data", args.val_data] if args.val_data else []),
            *(["--method", args.method] if args.method else []), "--out", args.out,
            *(["--config", args.config] if args.config else []), *extra]
    return distributed.run(cfg.train.strategy, cfg.train.device,
                           lambda d: _run(args, cfg, out, d, argv))


def _run(args: argparse.Namespace, cfg, out: Path, d: distributed.Dist, argv: list[str]) -> int:
    say = print if d.is_main else (lambda *a, **k: None)
    ft = cfg.finetune
    if not ft.data:
        raise ScratchLMError("no data: pass --data FILE (Alpaca, chat or prompt/completion JSONL)")
    if get_family(cfg.model.family).blocks is None:
        raise ScratchLMError(f"{args.model_dir} is a {cfg.model.family} model; finetune supports "
                             f"the {', '.join(families_with('blocks'))} families")
    block = cfg.model.block_size
    max_len = ft.max_len or block
    if max_len > block:
        raise ScratchLMError(f"finetune.max_len ({max_len}) is longer than the model's context "
                             f"({block})")
    model, tokenizer = load(args.model_dir)
    torch.manual_seed(cfg.train.seed)  # LoRA's A matrices
    names = prepare_model(model, cfg)  # before reading the data: bad LoRA targets fail fast
    # Chat data is rendered with the model's template or the built-in one; the fine-tuned
    # model keeps the one it learned (tokenizer_config.json), so chat and serve use it too.
    template = tokenizer.chat_template = training_template(tokenizer)
    read = {"tokenizer": tokenizer, "fmt": ft.format, "template": template, "max_len": max_len,
            "truncation": ft.truncation, "bad_lines": ft.bad_lines}
    examples, report = load_examples(ft.data, **read)
    say(f"data: {ft.data}: {report.summary()}")
    if ft.val_data:
        val, val_report = load_examples(ft.val_data, **read)
        say(f"validation: {ft.val_data}: {val_report.summary()}")
        train = examples
    else:
        train, val = split_examples(examples, val_fraction=ft.val_fraction, seed=cfg.train.seed)
        say(f"validation: {len(val)} of those examples held out (finetune.val_fraction)")
    common = {"block_size": max_len, "pad_id": tokenizer.pad_id, "packing": ft.packing,
              "group_by_length": ft.group_by_length}
    # The global batch (train.batch_size per process); each rank keeps its own rows of it.
    global_batch = cfg.train.batch_size * d.world
    splits = {"train": SFTData(train, batch_size=global_batch, **common),
              "val": SFTData(val, batch_size=global_batch, **common)}
    if d.is_main:
        if args.overwrite:
            clear_run_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        mark_dir(out)  # scratchlm's run: a later --overwrite may replace it
    d.barrier()  # no rank looks at --out before it is cleared
    m = cfg.model
    how = (f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha:g}{' (rsLoRA)' if cfg.lora.rslora else ''} "
           f"on {len(names)} layers" if names else "full fine-tuning")
    say(f"model: {args.model_dir} ({m.family}, {m.n_layer} layers, d_model {m.d_model}); {how}")
    say(trainable_summary(model))
    if ft.packing:
        say(f"packing: {len(train)} examples in {len(splits['train'].rows)} rows of up to "
            f"{max_len} tokens")
    io = adapter_io(ft.base) if ft.method == "lora" else {}
    trainer = Trainer(model=model, config=cfg, tokenizer=tokenizer, out_dir=out,
                      batches=lambda split, rng: distributed.shard_batch(splits[split].batch(rng), d),
                      loss_fn=sft_loss, dist=d, **io)
    if not args.resume:  # the same fixed validation batches as every later evaluation
        say(f"val loss before fine-tuning: {trainer.evaluate():.4f}")
    try:
        summary = trainer.fit(resume=args.resume)
    except Interrupted as e:  # SIGINT/SIGTERM: saved at a step boundary
        return stopped(e, argv, out, d)
    if not d.is_main:
        return 0
    png = report_done(out, summary, say)
    if ft.method == "lora":
        say(f"adapter (PEFT format): {out / 'final'}; loss curve: {png}")
        say(f"merge with:  scratchlm merge-lora {out} --out MERGED_DIR")
    else:
        say(f"model directory: {out / 'final'}; loss curve: {png}")
    say(f"chat with:  scratchlm generate {out / 'final'} --chat --prompt \"...\"")
    return 0
