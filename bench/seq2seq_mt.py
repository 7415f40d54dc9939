"""Translation quality of the encoder-decoder families on LibreOffice help en-fr, each trained
for the same CPU time budget, through the project CLI (what a user would type).

    .venv/bin/python bench/seq2seq_mt.py --minutes 12    # 12 min each (the committed table)
    .venv/bin/python bench/seq2seq_mt.py --minutes 20    # the issue's budget
    .venv/bin/python bench/seq2seq_mt.py --quick         # 20 s each, 50 test pairs, no doc update

Rows: (a) LSTM encoder-decoder without attention, (b) with Bahdanau attention, (c) with Luong
"general" attention and input feeding, (d) a Transformer encoder-decoder. The step count of
each run is calibrated so that training takes the budget: 15 timed training steps in this
process (the Trainer's own loss and optimizer), then max_steps = budget / seconds per step.
Test-set sacreBLEU and chrF (with signatures) for greedy and beam 5 come from
`scratchlm evaluate --metric bleu --metric chrf`. Outputs go to bench/out/ (gitignored).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C
import numpy as np
import torch

BIN = Path(sys.executable).parent
RAW = C.OUT / "raw" / "libreoffice-en-fr"
DATA = C.OUT / "libreoffice-en-fr-bpe"
DOC = C.ROOT / "docs" / "seq2seq.md"
IMAGES = C.ROOT / "docs" / "images"

COMMON_TRAIN = {"train.batch_size": 64, "train.lr": 2e-3, "train.warmup_steps": 100,
                "train.min_lr_ratio": 0.1, "train.weight_decay": 0.01, "train.grad_clip": 1.0,
                "train.label_smoothing": 0.1, "train.eval_batches": 10, "train.log_every": 50,
                "train.val_translate": 100, "train.best_metric": "val_bleu",
                "train.device": "cpu", "train.seed": 1337}
RNN = {"model.family": "seq2seq_rnn", "model.cell": "lstm", "model.n_layer": 2,
       "model.d_model": 128, "model.bidirectional": True, "model.dropout": 0.2}
ROWS = [
    ("a", "LSTM seq2seq, no attention", {**RNN, "model.attention": "none"}),
    ("b", "LSTM seq2seq + Bahdanau attention", {**RNN, "model.attention": "bahdanau"}),
    ("c", "LSTM seq2seq + Luong general attention (input feeding)",
     {**RNN, "model.attention": "luong_general", "model.input_feeding": True}),
    ("d", "Transformer encoder-decoder", {
        "model.family": "seq2seq_transformer", "model.n_layer": 3, "model.n_head": 4,
        "model.d_model": 128, "model.d_ff": 512, "model.dropout": 0.1}),
]
SENTENCE = "Click OK to close the dialog and save your changes."


def cli(*args: str) -> tuple[str, float]:
    cmd = [str(BIN / "scratchlm"), *args]
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t
    sys.stdout.write(proc.stdout[-3000:])
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout, dt


def seconds_per_step(overrides: dict) -> tuple[float, int, float]:
    """Time 15 training steps (after 3 warm-up) in this process, as the Trainer runs them.
    Returns (seconds per step, parameters, target tokens per step)."""
    from scratchlm.config import run_config_from_dict
    from scratchlm.data.pairs import PairData
    from scratchlm.registry import build_model
    from scratchlm.train.optim import make_optimizer
    from scratchlm.train.seq2seq import Seq2SeqLoss

    data = PairData(DATA)
    nested: dict = {"model": {}, "train": {}}
    for k, v in {**COMMON_TRAIN, **overrides}.items():
        sec, key = k.split(".", 1)
        nested[sec][key] = v
    nested["model"]["vocab_size"] = data.vocab_size
    cfg = run_config_from_dict(nested)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    opt = make_optimizer(model, cfg.train, device_type="cpu")
    loss_fn = Seq2SeqLoss(cfg.train)
    times, toks = [], []
    for i in range(18):
        batch = data.batch("train", batch_size=cfg.train.batch_size, rng=np.random.default_rng(i))
        t = time.perf_counter()
        loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(time.perf_counter() - t)
            toks.append(int((batch["labels"] != -100).sum()))
    return C.median(times), model.num_params(), float(np.mean(toks))


def main() -> None:
    C.setup(seed=0)
    quick = C.argv_flag("--quick")
    minutes = 1 / 3 if quick else 5.0
    if "--minutes" in sys.argv:
        minutes = float(sys.argv[sys.argv.index("--minutes") + 1])
    info = C.env_info()
    print(C.env_lines(info))
    _, t_get = cli("datasets", "get", "libreoffice-en-fr", "--out", str(RAW))
    if not (DATA / "meta.json").is_file():
        cli("prepare", str(RAW), "--out", str(DATA), "--tokenizer", "bpe", "--vocab-size", "8000")
    meta = json.loads((DATA / "meta.json").read_text())
    n_val = (meta["splits"].get("val") or meta["splits"]["valid"])["pairs"]  # "valid" before one naming
    n_test = 50 if quick else meta["splits"]["test"]["pairs"]
    results = []
    for key, title, overrides in ROWS:
        C.banner(f"({key}) {title}")
        sps, params, tok_step = seconds_per_step(overrides)
        steps = max(20, int(minutes * 60 / sps))
        run = C.OUT / "runs" / f"mt-{key}"
        train = {**COMMON_TRAIN, **overrides, "train.max_steps": steps,
                 "train.eval_every": max(10, steps // 5), "train.save_every": steps}
        args = [x for k, v in train.items() for x in (f"--{k}", str(v))]
        _, t_train = cli("train", "--data", str(DATA), "--out", str(run), "--overwrite", *args)
        row = {"key": key, "title": title, "params": params, "steps": steps, "train_s": t_train,
               "tok_s": tok_step / sps, "overrides": train}
        for beam in (1, 5):
            out, t_eval = cli("evaluate", str(run / "best"), "--data", str(DATA), "--split", "test",
                              "--metric", "bleu", "--metric", "chrf", "--num-beams", str(beam),
                              "--max-sentences", str(n_test), "--json")
            ev = json.loads(out.strip().splitlines()[-1])
            row[f"bleu{beam}"], row[f"chrf{beam}"] = ev["bleu"]["score"], ev["chrf"]["score"]
            row["sig_bleu"], row["sig_chrf"] = ev["bleu"]["signature"], ev["chrf"]["signature"]
            row[f"eval{beam}_s"] = t_eval
        out, _ = cli("translate", str(run / "best"), "--src", SENTENCE, "--num-beams", "5")
        row["example"] = out.strip()
        if key in ("b", "d") and not quick:
            IMAGES.mkdir(parents=True, exist_ok=True)
            cli("attention", str(run / "best"), "--src", SENTENCE, "--out",
                str(IMAGES / f"attention-{key}.png"))
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "overrides"}), flush=True)

    table = C.md_table(
        ["model", "params", "steps (time)", "train tok/s", "BLEU greedy", "BLEU beam 5",
         "chrF greedy", "chrF beam 5"],
        [[f"({r['key']}) {r['title']}", f"{r['params'] / 1e6:.1f}M",
          f"{r['steps']:,} ({r['train_s'] / 60:.1f} min)", f"{r['tok_s']:,.0f}",
          f"{r['bleu1']:.2f}", f"{r['bleu5']:.2f}", f"{r['chrf1']:.2f}", f"{r['chrf5']:.2f}"]
         for r in results])
    examples = "\n".join(f"- ({r['key']}) {r['example']}" for r in results)
    by = {r["key"]: r for r in results}
    checks = []
    for k in ("b", "c"):
        verdict = "yes" if by[k]["bleu1"] > by["a"]["bleu1"] else "**no**"
        checks.append(f"- attention ({k}) beats no attention (a) on greedy BLEU: {verdict} "
                      f"({by[k]['bleu1']:.2f} vs {by['a']['bleu1']:.2f})")
    for r in results:
        verdict = "yes" if r["bleu5"] > r["bleu1"] else "**no**"
        checks.append(f"- beam 5 beats greedy for ({r['key']}): {verdict} "
                      f"({r['bleu5']:.2f} vs {r['bleu1']:.2f})")
    body = "\n".join([
        "# Sequence-to-sequence: RNN and Transformer encoder-decoders on real translation",
        "",
        "Generated by `bench/seq2seq_mt.py` (do not edit by hand; rerun it).",
        "",
        C.env_lines(info),
        "",
        f"Data: `scratchlm datasets get libreoffice-en-fr` (LibreOffice help, Debian packages "
        f"libreoffice-help-en-us and -fr): {meta['splits']['train']['pairs']:,} train, "
        f"{n_val:,} val, {meta['splits']['test']['pairs']:,} test pairs; "
        f"`scratchlm prepare --tokenizer bpe --vocab-size 8000` (one byte-level BPE for both sides).",
        "",
        f"Each model (d_model 128, so that a few minutes of CPU are several epochs) trains for about {minutes:g} minutes of CPU time on 2 cores (steps calibrated "
        "from 15 timed steps), batch 64 pairs, AdamW lr 2e-3 with 100 warm-up steps and cosine "
        "decay, label smoothing 0.1, dropout 0.2 (RNNs) / 0.1 (Transformer); the checkpoint kept "
        "is the best by BLEU on 100 val pairs (`train.best_metric val_bleu`). Scores are on "
        f"{n_test:,} test pairs with `scratchlm evaluate --metric bleu --metric chrf` "
        "(`--num-beams 5` for beam).",
        "",
        table,
        "",
        f"sacreBLEU signatures: BLEU `{results[0]['sig_bleu']}`; chrF `{results[0]['sig_chrf']}`.",
        "",
        "Expectations:",
        "",
        *checks,
        "",
        f"\"{SENTENCE}\" with beam 5:",
        "",
        examples,
        "",
        "Attention of (b) Bahdanau and (d) the Transformer (cross-attention averaged over layers "
        "and heads) on that sentence (`scratchlm attention`):",
        "",
        "![Bahdanau attention](images/attention-b.png)",
        "",
        "![Transformer cross-attention](images/attention-d.png)",
        "",
        "Commands of row (b), as a user runs them:",
        "",
        "    scratchlm datasets get libreoffice-en-fr --out data/raw/libreoffice-en-fr",
        "    scratchlm prepare data/raw/libreoffice-en-fr --out data/en-fr --tokenizer bpe --vocab-size 8000",
        "    scratchlm train --data data/en-fr --out runs/en-fr-b " + " ".join(
            f"--{k} {v}" for k, v in by["b"]["overrides"].items() if k.startswith("model.")),
        "    scratchlm evaluate runs/en-fr-b/best --data data/en-fr --metric bleu --metric chrf --num-beams 5",
        "    scratchlm translate runs/en-fr-b/best --src \"Click OK.\" --num-beams 5",
    ])
    print("\n" + body)
    if not quick:
        DOC.write_text(body + "\n", encoding="utf-8")
        print(f"\nwrote {DOC}")


if __name__ == "__main__":
    main()
