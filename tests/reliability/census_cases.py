"""The census of bad CLI inputs: every verb, config key, data format, model directory /
checkpoint / GGUF / adapter kind a user can hand scratchlm wrongly. Each case is (class, argv,
regex): the command must exit non-zero, print no traceback, say what is wrong (the regex,
matched against stderr) and leave every input as it was and no partial output.

argv is one string: {w} is the shared world of good inputs (tests/reliability/conftest.py),
{b} the directory of bad inputs `make_bad` writes, {t} a fresh directory for outputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

TINY = "--model.preset tiny --model.block_size 16 --train.max_steps 1 --train.eval_every 1"
TRAIN = "train --data {w}/data --out {t}/run " + TINY
FT = "finetune {w}/model --data {w}/chat.jsonl --out {t}/ft --train.max_steps 1"

# (class, argv, regex)
CASES: list[tuple[str, str, str]] = []


def case(cls: str, argv: str, regex: str) -> None:
    CASES.append((cls, argv, regex))


# ----------------------------------------------------------------------------- usage
case("usage", "frobnicate", r"unknown command 'frobnicate'")
case("usage", "gnerate {w}/model", r"did you mean 'generate'")
case("usage", "prepare {w}/corpus", r"--out")
case("usage", "train --data {w}/data", r"--out")
case("usage", "generate", r"model_dir|MODEL_DIR")
case("usage", "generate {w}/model --max-new-tokens many", r"invalid int value")
case("usage", "datasets", r"ACTION|action")
case("usage", "tokenizer train --out {t}/tok", r"--input")
case("usage", "prepare --out {t}/d", r"give INPUT files")
case("usage", "prepare --src-file {w}/corpus/a.txt --out {t}/d", r"both --src-file and --tgt-file")
case("usage", "train --data {w}/data --out {t}/r --resume --overwrite", r"contradict")
case("usage", TRAIN + " stray", r"unexpected argument 'stray'")
case("usage", TRAIN + " --model.n_layer", r"--model.n_layer needs a value")
case("usage", TRAIN + " --modle.n_layer 2", r"did you mean --model\.n_layer")
case("usage", "download a/b/c", r"not a repository id")
case("usage", "download foo/bar --out {b}/users_dir", r"already exists and is not empty; pass --overwrite")
case("usage", "download foo/bar --out {b}/afile.txt", r"is a file; the model directory must be a directory")

# ----------------------------------------------------------------------------- config keys
BAD_TRAIN = {
    "max_steps": "0", "batch_size": "-1", "grad_accum": "0", "lr": "0", "min_lr_ratio": "-0.5",
    "warmup_steps": "-1", "weight_decay": "-0.1", "beta1": "1.5", "beta2": "-0.1",
    "grad_clip": "-1", "eval_every": "0", "eval_batches": "0", "save_every": "0",
    "log_every": "0", "seed": "-1", "threads": "-2", "label_smoothing": "1.0",
    "teacher_forcing": "2", "teacher_forcing_end": "-1", "val_beam": "0", "patience": "-1",
    "best_metric": "val_acc", "strategy": "mpi", "dtype": "float8",
    "teacher_forcing_schedule": "cubic", "device": "tpu7",
}
for key, value in BAD_TRAIN.items():
    case("config key", f"{TRAIN} --train.{key} {value}", rf"train\.{key}")
BAD_MODEL = {
    "n_layer": "0", "n_head": "0", "d_model": "-8", "block_size": "0", "dropout": "1.0",
    "norm_eps": "-1", "init_std": "0", "vocab_size": "-1", "n_kv_head": "3", "rope_theta": "0",
    "d_ff": "0",
}
for key, value in BAD_MODEL.items():
    case("config key", f"{TRAIN} --model.family llama --model.{key} {value}", rf"model\.{key}")
case("config key", f"{TRAIN} --model.family gpt --model.n_head 4 --model.d_model 30", r"model\.d_model.*n_head")
case("config key", f"{TRAIN} --model.family transformer", r"family|transformer")
case("config key", f"{TRAIN} --model.preset huge", r"unknown model\.preset 'huge'")
case("config key", f"{TRAIN} --model.n_layr 2", r"unknown config key model\.n_layr; did you mean model\.n_layer")
case("config key", f"{TRAIN} --train.lr fast", r"train\.lr must be a number")
case("config key", f"{TRAIN} --train.lr nan", r"train\.lr must be a finite number")
case("config key", f"{TRAIN} --train.lr inf", r"train\.lr must be a finite number")
case("config key", f"{TRAIN} --train.compile maybe", r"train\.compile must be true or false")
case("config key", f"{TRAIN} --train.max_steps 1.5", r"train\.max_steps must be an integer")
case("config key", f"{TRAIN} --data.dirr x", r"unknown config key data\.dirr")
for key, value in {"r": "0", "alpha": "-1", "dropout": "1.0", "targets": ","}.items():
    case("config key", f"{FT} --lora.{key} {value}", rf"lora\.{key}")
for key, value in {"method": "prefix", "val_fraction": "1.0", "max_len": "-1", "format": "csv",
                   "truncation": "middle", "bad_lines": "ignore", "freeze_layers": "-1"}.items():
    case("config key", f"{FT} --finetune.{key} {value}", rf"finetune\.{key}")
case("config key", f"{FT} --lora.targets nosuch_proj", r"LoRA target 'nosuch_proj' matches no linear layer")
case("config key", f"{FT} --lora.targets lm_head", r"output layer")
case("config key", f"{FT} --finetune.max_len 9999", r"finetune\.max_len .* longer than the model's context")
case("config key", f"{FT} --model.n_layer 2", r"takes the model .* from MODEL_DIR")
case("config key", f"{FT} --method full --lora.r 4", r"lora\.\* settings apply to --method lora")

# ----------------------------------------------------------------------------- config files
case("config file", "train --config {b}/missing.yaml --data {w}/data --out {t}/r", r"does not exist")
case("config file", "train --config {b}/broken.yaml --data {w}/data --out {t}/r", r"not valid YAML")
case("config file", "train --config {b}/list.yaml --data {w}/data --out {t}/r", r"must be a mapping")
case("config file", "train --config {b}/section.yaml --data {w}/data --out {t}/r", r"unknown config section 'trian'; did you mean train")
case("config file", "train --config {b}/nan.yaml --data {w}/data --out {t}/r", r"train\.lr must be a finite number")

# ----------------------------------------------------------------------------- text inputs
case("data format", "prepare {b}/missing.txt --out {t}/d", r"does not exist")
case("data format", "prepare {b}/binary.txt --out {t}/d", r"binary")
case("data format", "prepare {b}/empty.txt --out {t}/d", r"empty")
case("data format", "prepare {b}/emptydir --out {t}/d", r"(contains no files|empty|no .*files)")
case("data format", "prepare {b}/latin1.txt --out {t}/d", r"latin1\.txt.*(UTF-8|utf-8).*offset 15\b")
case("data format", "prepare {w}/corpus --out {t}/d --val-fraction 1.5", r"--val-fraction")
case("data format", "prepare {w}/corpus --out {t}/d --tokenizer {b}/emptydir", r"tokenizer")
case("data format", "prepare {w}/corpus --out {t}/d --tokenizer wordpiece", r"wordpiece")
case("data format", "prepare {w}/corpus --out {t}/d --tokenizer bpe --vocab-size 3", r"vocab")
case("data format", "tokenizer train --input {b}/binary.txt --out {t}/tok", r"binary")
case("data format", "tokenizer train --input {b}/missing.txt --out {t}/tok", r"does not exist")
case("data format", "prepare {b}/bad.tsv --format pairs --out {t}/d", r"bad\.tsv")
case("data format", "prepare {b}/bad.jsonl --format pairs --out {t}/d", r"bad\.jsonl.*(line|:)\s*2|bad\.jsonl:2")
case("data format", "prepare --src-file {b}/two.txt --tgt-file {b}/three.txt --out {t}/d", r"(line|lines|aligned|2.*3|3.*2)")
case("data format", "datasets get nosuchcorpus --out {t}/d --offline", r"unknown dataset 'nosuchcorpus'")

# ----------------------------------------------------------------------------- data directories
case("data dir", "train --data {b}/missing --out {t}/r " + TINY, r"(missing|does not exist|no meta\.json)")
case("data dir", "train --data {b}/emptydir --out {t}/r " + TINY, r"no meta\.json")
case("data dir", "train --data {b}/data_short --out {t}/r " + TINY, r"train\.bin holds \d+ tokens but meta\.json says")
case("data dir", "train --data {b}/data_tok_out --out {t}/r " + TINY, r"meta\.json names '\.\./\.\./etc', which lies outside")
case("data dir", "train --data {b}/data_tok_abs --out {t}/r " + TINY, r"meta\.json names '/etc', which lies outside")
case("data dir", "train --data {b}/data_badjson --out {t}/r " + TINY, r"meta\.json")
case("data dir", "train --data {b}/data_nodtype --out {t}/r " + TINY, r"meta\.json is damaged \(KeyError: 'dtype'\)")
case("data dir", "train --data {b}/data_splits_list --out {t}/r " + TINY, r"meta\.json is damaged \(TypeError")
case("data dir", "train --data {b}/pairs_escape --out {t}/r --model.family seq2seq_transformer "
     "--model.preset tiny --train.max_steps 1", r"meta\.json names '\.\./\.\./x\.src\.bin', which lies outside")
case("data dir", "train --data {b}/pairs_nodtype --out {t}/r --model.family seq2seq_transformer "
     "--model.preset tiny --train.max_steps 1", r"meta\.json is damaged \(KeyError: 'dtype'\)")
case("data dir", "train --data {w}/data --out {t}/r --model.preset tiny --model.block_size 100000", r"block_size")
case("data dir", "evaluate {w}/model --data {b}/emptydir", r"meta\.json|not .*data|no .*data")

# ----------------------------------------------------------------------------- SFT files
case("sft file", "finetune {w}/model --data {b}/missing.jsonl --out {t}/ft", r"missing\.jsonl")
case("sft file", "finetune {w}/model --data {b}/sft_badline.jsonl --out {t}/ft", r"sft_badline\.jsonl.*2")
case("sft file", "finetune {w}/model --data {b}/sft_roles.jsonl --out {t}/ft", r"role")
case("sft file", "finetune {w}/model --data {b}/empty.txt --out {t}/ft", r"empty|no examples")
case("sft file", "finetune {w}/model --data {b}/binary.txt --out {t}/ft", r"binary\.txt")
case("sft file", "finetune {w}/model --out {t}/ft", r"no data: pass --data")
case("sft file", "finetune {b}/model_badtemplate --data {w}/chat.jsonl --out {t}/ft", r"(chat )?template")
case("sft file", "generate {b}/model_badtemplate --chat --prompt hi --max-new-tokens 1", r"(chat )?template")
case("sft file", "generate {b}/model_template_type --chat --prompt hi --max-new-tokens 1", r"chat template failed: TypeError")
case("sft file", "finetune {b}/model_template_type --data {w}/chat.jsonl --out {t}/ft", r"chat template failed: TypeError")
case("sft file", "evaluate {b}/model_template_type --data {w}/chat.jsonl", r"chat template failed: TypeError")

# ----------------------------------------------------------------------------- model directories
GEN = "generate {} --prompt a --max-new-tokens 1"
case("model dir", GEN.format("{b}/missing"), r"does not exist")
case("model dir", GEN.format("{b}/emptydir"), r"no config\.json")
case("model dir", GEN.format("{b}/model_cfg_broken"), r"config\.json is not valid JSON")
case("model dir", GEN.format("{b}/model_cfg_list"), r"config\.json must hold a JSON object")
case("model dir", GEN.format("{b}/model_cfg_nan"), r"norm_eps must be a finite number")
case("model dir", GEN.format("{b}/model_cfg_neg_eps"), r"norm_eps must be > 0")
case("model dir", GEN.format("{b}/model_cfg_noblock"), r"\"scratchlm\" block has no \"model\"")
case("model dir", GEN.format("{b}/model_cfg_family"), r"family")
case("model dir", GEN.format("{b}/model_no_weights"), r"no model\.safetensors")
case("model dir", GEN.format("{b}/model_weights_garbage"), r"corrupt or not a safetensors file")
case("model dir", GEN.format("{b}/model_weights_shape"), r"has shape .* config says")
case("model dir", GEN.format("{b}/model_weights_missing_key"), r"do not match config\.json")
case("model dir", GEN.format("{b}/model_no_tokenizer"), r"no tokenizer\.json")
case("model dir", GEN.format("{b}/model_tokenizer_garbage"), r"tokenizer\.json is not a valid tokenizer")
case("model dir", GEN.format("{b}/model_shard_escape"), r"names '\.\./model/model\.safetensors', which lies outside")
case("model dir", GEN.format("{b}/model_shard_abs"), r"names '/etc/passwd', which lies outside")
case("model dir", GEN.format("{b}/model_shard_dev"), r"lists zero, which is not a regular file")
case("model dir", GEN.format("{b}/model_shard_link"), r"names 'zero', which lies outside")
case("model dir", GEN.format("{b}/model_shard_missing"), r"lists .*, which is missing")
case("model dir", GEN.format("{b}/model_index_broken"), r"not a valid shard index")
case("model dir", GEN.format("{b}/model_bin_garbage"), r"not a PyTorch weights file")
case("model dir", "generate {w}/model --prompt a --max-new-tokens 0", r"max-new-tokens|max_new_tokens")
case("model dir", "generate {w}/model --prompt a --temperature -1", r"temperature")
case("model dir", "generate {w}/model --prompt a --top-p 2", r"top.p")
case("model dir", "generate {w}/model --prompt a --num-beams 0", r"num.beams")
case("model dir", "generate {w}/model --prompt a --device tpu7", r"tpu7")
case("model dir", "evaluate {w}/model --data {w}/chat.jsonl --metric bleu --num-beams 0", r"--num-beams must be at least 1")
case("model dir", "translate {w}/model --src hi --num-beams 0", r"--num-beams must be at least 1")
case("model dir", "serve {w}/model --port 99999", r"--port must be between 0 and 65535")
case("model dir", "serve {w}/model --port -1", r"--port must be between 0 and 65535")
case("model dir", "chat {b}/missing", r"does not exist")
case("model dir", "translate {w}/model --src hi", r"decoder-only")
case("model dir", "evaluate {w}/model --data {w}/corpus", r"meta\.json|data directory|prepare")
case("model dir", "plot {b}/emptydir", r"metrics\.jsonl|no .*metrics|nothing to plot")
case("model dir", "attention {w}/model --src hi --out {t}/a.png", r"encoder-decoder|seq2seq|decoder-only")
case("model dir", "convert {b}/missing {t}/m", r"does not exist")
case("model dir", "convert {w}/model {t}/m --to onnx", r"invalid choice: 'onnx'")
case("model dir", "convert {w}/model {t}/m.gguf --outtype q9_9", r"q9_9")
case("model dir", "convert {w}/model {w}/model", r"same path")

# ----------------------------------------------------------------------------- checkpoints (runs)
case("checkpoint", TRAIN.replace("{t}/run", "{b}/run_nolast") + " --resume", r"no checkpoint|nothing to resume")
case("checkpoint", TRAIN.replace("{t}/run", "{b}/run_badstate") + " --resume", r"trainer_state\.pt.*(corrupt|missing)")
case("checkpoint", TRAIN.replace("{t}/run", "{b}/run_user") , r"already exists and is not empty; pass --overwrite|already holds")
case("checkpoint", TRAIN.replace("{t}/run", "{b}/run_user") + " --overwrite", r"not written by scratchlm")
case("checkpoint", "plot {b}/run_badmetrics", r"metrics\.jsonl")
case("checkpoint", "merge-lora {b}/run_nolast --out {t}/m", r"holds no LoRA adapter")

# ----------------------------------------------------------------------------- GGUF files
case("gguf", GEN.format("{b}/garbage.gguf"), r"garbage\.gguf")
case("gguf", GEN.format("{b}/truncated.gguf"), r"truncated\.gguf")
case("gguf", "convert {b}/truncated.gguf {t}/m", r"truncated\.gguf")
case("gguf", "convert {w}/model.gguf {w}/corpus --overwrite", r"not written by scratchlm")
case("gguf", "convert {w}/model {b}/notes.gguf --overwrite", r"not a GGUF file")
case("gguf", "convert {w}/model {b}/emptydir --to gguf", r"is a directory; a GGUF output is a file")

# ----------------------------------------------------------------------------- LoRA adapters
case("adapter", "merge-lora {b}/missing --out {t}/m", r"does not exist")
case("adapter", "merge-lora {b}/adapter_cfg_broken --out {t}/m", r"adapter_config\.json is not valid JSON")
case("adapter", "merge-lora {b}/adapter_regex --out {t}/m", r"target_modules|regular expression|regex")
case("adapter", "merge-lora {b}/adapter_no_weights --out {t}/m", r"adapter_model")
case("adapter", "merge-lora {b}/adapter_no_base --out {t}/m", r"names no base model|not a directory here")
case("adapter", "merge-lora {b}/adapter_dora --out {t}/m", r"use_dora")
case("adapter", "merge-lora {b}/adapter_wrong_r --out {t}/m", r"shape|rank|r=|does not fit")
case("adapter", "merge-lora {w}/adapter --out {t}/m --base {b}/emptydir", r"no config\.json")
case("adapter", "merge-lora {w}/model --out {t}/m", r"holds no LoRA adapter|full model directory")
case("adapter", "generate {b}/adapter_regex --prompt a --max-new-tokens 1", r"target_modules|regular expression|regex")

# ----------------------------------------------------------------------------- outputs
for args in ("prepare {w}/corpus --out {o}",
             "tokenizer train --input {w}/corpus --kind char --out {o}",
             "merge-lora {w}/adapter --out {o}",
             "datasets get shakespeare --offline --out {o}",
             "convert {w}/model {o}",
             FT.replace("{t}/ft", "{o}")):
    case("outputs", args.format(w="{w}", o="{b}/users_dir"), r"already exists and is not empty; pass --overwrite")
    case("outputs", args.format(w="{w}", o="{b}/users_dir") + " --overwrite", r"not written by scratchlm")
    case("outputs", args.format(w="{w}", o="{b}/afile.txt/sub"), r"afile\.txt is a file, not a directory")
case("outputs", "prepare {w}/corpus --out {w}/corpus/sub", r"is inside the input")
case("outputs", "prepare {w}/corpus --out {w} --overwrite", r"holds the input")
case("outputs", "tokenizer train --input {w}/corpus --out {w}/corpus --overwrite", r"is the input")
case("outputs", "merge-lora {w}/adapter --out {w}/adapter --overwrite", r"is the input")
case("outputs", "merge-lora {w}/adapter --out {w}/model --overwrite", r"is the input")
case("outputs", "convert {w}/model {w}/model/sub.gguf", r"must lie outside SRC")
case("outputs", "finetune {w}/model --data {w}/chat.jsonl --out {w}/model/run", r"is inside the input")
case("outputs", "prepare {w}/corpus --out {b}/afile.txt", r"is a file; the data directory must be a directory")
case("outputs", "plot {b}/run_metrics_only --out {b}/afile.txt/p.png", r"afile\.txt is a file")


# ----------------------------------------------------------------------------- bad inputs
def make_bad(b: Path, w: Path) -> None:
    """Write every bad input the cases name into `b` (the good ones come from `w`)."""
    b.mkdir(parents=True, exist_ok=True)
    (b / "emptydir").mkdir()
    (b / "broken.yaml").write_text("train: {lr: [1, 2\n")
    (b / "list.yaml").write_text("- 1\n- 2\n")
    (b / "section.yaml").write_text("trian:\n  lr: 0.1\n")
    (b / "nan.yaml").write_text("train:\n  lr: .nan\n")
    (b / "binary.txt").write_bytes(b"\x00\x01\x02 binary \x00" * 10)
    (b / "empty.txt").write_text("")
    (b / "latin1.txt").write_bytes(b"hello world " + "caf\xe9 au lait\n".encode("latin-1"))
    (b / "bad.tsv").write_text("hello\tbonjour\nno tab here\n")
    (b / "bad.jsonl").write_text('{"src": "a", "tgt": "b"}\n{"src": "a", \n')
    (b / "two.txt").write_text("a\nb\n")
    (b / "three.txt").write_text("a\nb\nc\n")
    (b / "afile.txt").write_text("a file\n")
    (b / "notes.gguf").write_text("my notes, not a model\n")
    (b / "users_dir").mkdir()
    (b / "users_dir" / "notes.txt").write_text("my own notes\n")
    (b / "garbage.gguf").write_bytes(b"NOTGGUF" + b"\x00" * 100)
    good = (w / "model.gguf").read_bytes()
    (b / "truncated.gguf").write_bytes(good[: len(good) // 3])
    # SFT files
    (b / "sft_badline.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
        + "\n{not json\n")
    (b / "sft_roles.jsonl").write_text(
        json.dumps({"messages": [{"role": "wizard", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    # data directories
    for name in ("data_short", "data_tok_out", "data_tok_abs", "data_badjson"):
        shutil.copytree(w / "data", b / name)
    with open(b / "data_short" / "train.bin", "r+b") as f:
        f.truncate(10)
    _edit_json(b / "data_tok_out" / "meta.json", tokenizer="../../etc")
    _edit_json(b / "data_tok_abs" / "meta.json", tokenizer="/etc")
    (b / "data_badjson" / "meta.json").write_text("{")
    for name in ("data_nodtype", "data_splits_list"):
        shutil.copytree(w / "data", b / name)
    meta = json.loads((w / "data" / "meta.json").read_text())
    (b / "data_nodtype" / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "dtype"}))
    _edit_json(b / "data_splits_list" / "meta.json", splits=[1, 2])
    (b / "pairs.tsv").write_text("".join(f"hello {i}\tbonjour {i}\n" for i in range(40)))
    from scratchlm.cli import main

    for name in ("pairs_escape", "pairs_nodtype"):
        assert main(["prepare", str(b / "pairs.tsv"), "--format", "pairs", "--out", str(b / name)]) == 0
    meta = json.loads((b / "pairs_escape" / "meta.json").read_text())
    _edit_json(b / "pairs_escape" / "meta.json", splits={"../../x": meta["splits"]["train"]})
    (b / "pairs_nodtype" / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "dtype"}))
    # model directories
    def model(name: str) -> Path:
        shutil.copytree(w / "model", b / name)
        return b / name
    (model("model_cfg_broken") / "config.json").write_text("{")
    (model("model_cfg_list") / "config.json").write_text("[1, 2]")
    cfg = json.loads((w / "model" / "config.json").read_text())
    (model("model_cfg_nan") / "config.json").write_text(
        json.dumps({**cfg, "scratchlm": {**cfg["scratchlm"], "model": {**cfg["scratchlm"]["model"], "norm_eps": float("nan")}}}))
    (model("model_cfg_neg_eps") / "config.json").write_text(
        json.dumps({**cfg, "scratchlm": {**cfg["scratchlm"], "model": {**cfg["scratchlm"]["model"], "norm_eps": -1}}}))
    (model("model_cfg_noblock") / "config.json").write_text(json.dumps({**cfg, "scratchlm": {"format": "x"}}))
    (model("model_cfg_family") / "config.json").write_text(
        json.dumps({**cfg, "scratchlm": {**cfg["scratchlm"], "model": {**cfg["scratchlm"]["model"], "family": "nosuch"}}}))
    (model("model_no_weights") / "model.safetensors").unlink()
    (model("model_weights_garbage") / "model.safetensors").write_bytes(b"\x10\x00garbage" * 20)
    state = load_file(str(w / "model" / "model.safetensors"))
    k0 = sorted(state)[0]
    save_file({**state, k0: state[k0][..., :1].contiguous()}, str(model("model_weights_shape") / "model.safetensors"))
    save_file({k: v for k, v in state.items() if k != k0}, str(model("model_weights_missing_key") / "model.safetensors"))
    (model("model_no_tokenizer") / "tokenizer.json").unlink()
    (model("model_tokenizer_garbage") / "tokenizer.json").write_text('{"model": 5}')
    for name, shard in (("model_shard_escape", "../model/model.safetensors"), ("model_shard_abs", "/etc/passwd"),
                        ("model_shard_dev", "zero"), ("model_shard_link", "zero"),
                        ("model_shard_missing", "nothere.safetensors")):
        d = model(name)
        (d / "model.safetensors").rename(d / "model-1.safetensors")
        keys = sorted(state)
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {k: ("model-1.safetensors" if i % 2 else shard) for i, k in enumerate(keys)}}))
    os.mkfifo(b / "model_shard_dev" / "zero")  # a device-like file inside: not a regular file
    (b / "model_shard_link" / "zero").symlink_to("/dev/zero")  # a link out of the directory
    d = model("model_index_broken")
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text('{"weight_map": [1]}')
    d = model("model_bin_garbage")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not a pickle")
    d = model("model_badtemplate")
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["chat_template"] = "{% for m in messages %}{{ m.content + 1 }}{% endfor %}{% if %}"
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    d = model("model_template_type")  # compiles, fails when rendered
    _edit_json(d / "tokenizer_config.json", chat_template="{% for m in messages %}{{ m.content + 1 }}{% endfor %}")
    # runs
    (b / "run_nolast").mkdir()
    (b / "run_nolast" / "config.yaml").write_text("train: {}\n")
    (b / "run_badstate" / "last").mkdir(parents=True)
    (b / "run_badstate" / "last" / "trainer_state.pt").write_bytes(b"garbage")
    (b / "run_badstate" / "config.yaml").write_text("train: {}\n")
    shutil.copytree(b / "users_dir", b / "run_user")
    (b / "run_badmetrics").mkdir()
    (b / "run_badmetrics" / "metrics.jsonl").write_text("{broken\n")
    (b / "run_metrics_only").mkdir()
    (b / "run_metrics_only" / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "train_loss": 1.0}) + "\n" + json.dumps({"step": 2, "train_loss": 0.5}) + "\n")
    # adapters
    def adapter(name: str) -> Path:
        shutil.copytree(w / "adapter", b / name)
        return b / name
    (adapter("adapter_cfg_broken") / "adapter_config.json").write_text("{")
    _edit_json(adapter("adapter_regex") / "adapter_config.json", target_modules="(q_proj")
    (adapter("adapter_no_weights") / "adapter_model.safetensors").unlink()
    _edit_json(adapter("adapter_no_base") / "adapter_config.json", base_model_name_or_path=None)
    _edit_json(adapter("adapter_dora") / "adapter_config.json", use_dora=True)
    _edit_json(adapter("adapter_wrong_r") / "adapter_config.json", r=7)


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
