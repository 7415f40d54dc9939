"""The recipes: the commands of each docs/recipes/ page and how their output becomes Markdown.

Run them with `python -m recipes NAME|all` (see recipes/__main__.py and recipes/driver.py).
"""

from __future__ import annotations

import json
import re

from recipes.driver import (
    Recipe,
    RecipeError,
    Step,
    code_block,
    md_cell,
    need,
    parse_lm_eval,
    parse_samples,
    parse_scores,
    parse_train,
)


def S(name: str, cmd: str) -> Step:
    import shlex

    return Step(name, shlex.split(cmd))


# ----------------------------------------------------------------------------- text generation
def textgen_steps(lang: str) -> list[Step]:
    if lang == "en":
        data, raw, vocab, prompts = "data/shakespeare-bpe", "data/raw/shakespeare", 2048, ["ROMEO:", "To be, or not"]
        get = S("get", f"scratchlm datasets get shakespeare --out {raw}")
    else:
        data, raw, vocab, prompts = "data/fortunes-zh-bpe", "data/raw/fortunes-zh", 4096, ["我喜欢吃苹果", "床前明月光"]
        get = S("get", f"scratchlm datasets get fortunes-zh --out {raw}")
    run = f"runs/recipe-textgen-{lang}"
    steps = [
        get,
        S("prepare", f"scratchlm prepare {raw} --out {data} --tokenizer bpe --vocab-size {vocab}"),
        S("train", f"scratchlm train --config configs/recipe-textgen-{lang}.yaml --data {data} "
                   f"--out {run} --overwrite"),
        S("evaluate", f"scratchlm evaluate {run}/final --data {data}"),
    ]
    for i, prompt in enumerate(prompts, 1):
        steps.append(S(f"generate-{i}", f"scratchlm generate {run}/final --prompt {prompt!r} "
                                         f"--max-new-tokens 80 --temperature 0.8 --top-k 40 --seed 1 "
                                         f"--num-samples 2"))
    return steps


def render_textgen(outputs: dict[str, str], timings: dict[str, float]) -> str:
    tr = parse_train(outputs["train"])
    ev = parse_lm_eval(outputs["evaluate"])
    lines = [
        "| steps | final train loss | held-out loss | held-out perplexity | bits per byte | held-out tokens |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {tr['steps']:,} | {tr['train_loss']:.3f} | {ev['loss']:.3f} | {ev['ppl']:.1f} | "
        f"{ev['bpb']:.3f} | {ev['tokens']:,} |",
        "",
        "Samples (temperature 0.8, top-k 40, seed 1, 80 new tokens):",
        "",
    ]
    for name in sorted(k for k in outputs if k.startswith("generate-")):
        for s in parse_samples(outputs[name]):
            lines += [code_block(s), ""]
    return "\n".join(lines).rstrip()


# ----------------------------------------------------------------------------- translation
MT_SENTENCE = "Click OK to close the dialog and save your changes."


def mt_steps(tgt: str) -> list[Step]:
    raw, data, run = f"data/raw/libreoffice-en-{tgt}", f"data/en-{tgt}", f"runs/recipe-mt-en-{tgt}"
    return [
        S("get", f"scratchlm datasets get libreoffice-en-{tgt} --out {raw}"),
        S("prepare", f"scratchlm prepare {raw} --out {data} --tokenizer bpe --vocab-size 8000"),
        S("train", f"scratchlm train --config configs/recipe-mt-en-{tgt}.yaml --data {data} --out {run} --overwrite"),
        S("evaluate-greedy", f"scratchlm evaluate {run}/best --data {data} --metric bleu --metric chrf"),
        S("evaluate-beam", f"scratchlm evaluate {run}/best --data {data} --metric bleu --metric chrf --num-beams 5"),
        S("translate", f"scratchlm translate {run}/best --src {MT_SENTENCE!r} --num-beams 5"),
        S("attention", f"scratchlm attention {run}/best --src {MT_SENTENCE!r} --num-beams 5 "
                       f"--out docs/recipes/images/attention-en-{tgt}.png"),
    ]


def _signature(text: str, name: str) -> str:
    m = re.search(rf"^{name}\S* = .*\| (\S+)$", text, flags=re.M)
    return m.group(1) if m else "?"


def render_mt(tgt: str):
    def render(outputs: dict[str, str], timings: dict[str, float]) -> str:
        tr = parse_train(outputs["train"])
        greedy, beam = parse_scores(outputs["evaluate-greedy"]), parse_scores(outputs["evaluate-beam"])
        n = need(r"^(\d+) pairs \((\w+)\)", outputs["evaluate-greedy"], "the number of test pairs")
        if "bleu" not in greedy or "bleu" not in beam:
            raise RecipeError("no BLEU line in the evaluate output")
        translation = [x for x in outputs["translate"].splitlines() if x.strip()]
        return "\n".join([
            f"Trained {tr['steps']:,} steps (final train loss {tr['train_loss']:.3f}, val loss "
            f"{tr['val_loss']:.3f}); `best/` is the checkpoint with the best BLEU on 100 val pairs. "
            f"Scores on the {int(n.group(1)):,} pairs of the fixed {n.group(2)} split:",
            "",
            "| decoding | BLEU | chrF |",
            "|---|---:|---:|",
            f"| greedy | {greedy['bleu']:.2f} | {greedy.get('chrf', float('nan')):.2f} |",
            f"| beam 5 | {beam['bleu']:.2f} | {beam.get('chrf', float('nan')):.2f} |",
            "",
            f"sacreBLEU signatures: BLEU `{_signature(outputs['evaluate-beam'], 'BLEU')}`; "
            f"chrF `{_signature(outputs['evaluate-beam'], 'chrF')}`.",
            "",
            f"\"{MT_SENTENCE}\" with beam 5: **{md_cell(translation[-1] if translation else '')}**",
            "",
            "Cross-attention while translating it (averaged over layers and heads):",
            "",
            f"![attention en-{tgt}](images/attention-en-{tgt}.png)",
        ])
    return render


# ----------------------------------------------------------------------------- summarization
SUM_RAW, SUM_DATA = "data/raw/debian-descriptions", "data/debian-sum"
SUBSET = 100  # test pairs the SmolLM2 decode scores (the first 100 of the fixed test split)


SUM_LM = "--metric rouge{n} --max-new-tokens 32 --stop '\\n'"  # one line of summary


def summarize_steps() -> list[Step]:
    run, lora = "runs/recipe-sum-seq2seq", "runs/recipe-sum-lora"
    lm, lm_all = SUM_LM.format(n=f" --max-sentences {SUBSET}"), SUM_LM.format(n="")
    return [
        S("get", f"scratchlm datasets get debian-descriptions --out {SUM_RAW}"),
        S("prepare", f"scratchlm prepare {SUM_RAW} --out {SUM_DATA} --tokenizer bpe --vocab-size 8000 "
                     f"--max-len 128 --on-long truncate"),
        S("train", f"scratchlm train --config configs/recipe-summarize-seq2seq.yaml --data {SUM_DATA} "
                   f"--out {run} --overwrite"),
        S("rouge-seq2seq", f"scratchlm evaluate {run}/best --data {SUM_DATA} --metric rouge"),
        S("rouge-seq2seq-100", f"scratchlm evaluate {run}/best --data {SUM_DATA} --metric rouge "
                               f"--max-sentences {SUBSET}"),
        S("rouge-lead", f"python recipes/tools.py lead {SUM_RAW}"),
        S("rouge-lead-100", f"python recipes/tools.py lead {SUM_RAW} --max-sentences {SUBSET}"),
        S("smollm2", "python recipes/tools.py smollm2 --out models/smollm2"),
        S("sft-pairs", f"python recipes/tools.py sft-pairs {SUM_RAW} --out data/debian-sft --train 2000 --val 200"),
        S("rouge-base-100", f"scratchlm evaluate models/smollm2 --data data/debian-sft/test-chat.jsonl {lm}"),
        S("finetune", f"scratchlm finetune models/smollm2 --data data/debian-sft/train.jsonl "
                      f"--val-data data/debian-sft/val.jsonl --out {lora} "
                      f"--config configs/recipe-summarize-lora.yaml --overwrite"),
        S("rouge-lora", f"scratchlm evaluate {lora}/best --data data/debian-sft/test.jsonl {lm_all} "
                        f"--hyps-out {lora}/test-outputs.jsonl"),
        S("rouge-lora-100", f"scratchlm evaluate {lora}/best --data data/debian-sft/test.jsonl {lm}"),
        S("examples", f"head -n 3 {lora}/test-outputs.jsonl"),
    ]


def _rouge_row(label: str, text: str) -> str:
    r = parse_scores(text)
    if not {"rouge1", "rouge2", "rougeL"} <= r.keys():
        raise RecipeError(f"no ROUGE-1/2/L lines in the output for {label}")
    n = need(r"^(\d+) pairs", text, "the number of pairs")
    return f"| {label} | {int(n.group(1)):,} | {r['rouge1']:.2f} | {r['rouge2']:.2f} | {r['rougeL']:.2f} |"


def _document(prompt: str) -> str:
    """The description inside a summary prompt (recipes/tools.py PROMPT)."""
    parts = prompt.split("\n\n")
    return parts[1] if len(parts) >= 3 else prompt


def render_summarize(outputs: dict[str, str], timings: dict[str, float]) -> str:
    tr = parse_train(outputs["train"])
    ft = parse_train(outputs["finetune"])
    examples = [json.loads(x) for x in outputs["examples"].splitlines() if x.startswith("{")]
    lines = [
        "| summarizer | test pairs | ROUGE-1 | ROUGE-2 | ROUGE-L |",
        "|---|---:|---:|---:|---:|",
        _rouge_row("lead sentence (baseline)", outputs["rouge-lead"]),
        _rouge_row(f"seq2seq Transformer from scratch ({tr['steps']:,} steps), greedy", outputs["rouge-seq2seq"]),
        _rouge_row(f"SmolLM2-135M-Instruct + LoRA ({ft['steps']} steps), greedy", outputs["rouge-lora"]),
        _rouge_row("lead sentence (baseline)", outputs["rouge-lead-100"]),
        _rouge_row("seq2seq Transformer from scratch, greedy", outputs["rouge-seq2seq-100"]),
        _rouge_row("SmolLM2-135M-Instruct zero-shot (asked in its chat template), greedy",
                   outputs["rouge-base-100"]),
        _rouge_row(f"SmolLM2-135M-Instruct + LoRA ({ft['steps']} steps), greedy", outputs["rouge-lora-100"]),
        "",
        f"The zero-shot model is scored on the first {SUBSET} test pairs only (its answers are "
        f"longer and slower to decode; all 1,000 would take the recipe past its budget), so the "
        f"others are scored on that subset too. "
        f"LoRA validation loss: {ft.get('val_loss_before', float('nan')):.3f} before fine-tuning, "
        f"{ft.get('best_val_loss', ft['val_loss']):.3f} best.",
        "",
    ]
    if examples:
        lines += ["| description (cut) | reference synopsis | SmolLM2 + LoRA |", "|---|---|---|"]
        lines += [f"| {md_cell(_document(e['prompt']), 160)} | {md_cell(e['reference'])} | "
                  f"{md_cell(e['output'])} |" for e in examples]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- QA / dialogue
QA_TEST = 50  # held-out conversations scored by chrF / ROUGE-L (the first 50 of the test split)
QA_SCORE = (f"--data data/chatterbot-en/test.jsonl --metric chrf --metric rouge "
            f"--max-sentences {QA_TEST} --max-new-tokens 48")


def qa_steps() -> list[Step]:
    return [
        S("get", "scratchlm datasets get chatterbot-en --out data/chatterbot-en"),
        S("smollm2", "python recipes/tools.py smollm2 --out models/smollm2"),
        S("finetune", "scratchlm finetune models/smollm2 --data data/chatterbot-en/train.jsonl "
                      "--val-data data/chatterbot-en/val.jsonl --out runs/recipe-qa "
                      "--config configs/recipe-qa.yaml --overwrite"),
        S("score-before", f"scratchlm evaluate models/smollm2 {QA_SCORE}"),
        S("score-after", f"scratchlm evaluate runs/recipe-qa/best {QA_SCORE}"),
        S("answers", "python recipes/tools.py answers models/smollm2 runs/recipe-qa/best "
                     "--data data/chatterbot-en/test.jsonl --n 6"),
        S("web-chat", "python recipes/tools.py web-chat runs/recipe-qa/best --question 'Can you breathe' "
                      "--question 'Why not?' --screenshot docs/recipes/images/qa-web-chat.png"),
    ]


def render_qa(outputs: dict[str, str], timings: dict[str, float]) -> str:
    ft = parse_train(outputs["finetune"])
    evals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+), val ppl ([\d.]+)",
                       outputs["finetune"], flags=re.M)
    rows = [json.loads(x) for x in outputs["answers"].splitlines() if x.startswith("{")]
    if not rows:
        raise RecipeError("no answers in the output of the answers step")
    lines = ["| | validation loss | validation perplexity |", "|---|---:|---:|"]
    if "val_loss_before" in ft:
        b = ft["val_loss_before"]
        lines.append(f"| before fine-tuning | {b:.4f} | {2.718281828459045 ** b:.2f} |")
    for step, _, vl, vp in evals:
        lines.append(f"| after {step} steps | {float(vl):.4f} | {float(vp):.2f} |")
    before, after = parse_scores(outputs["score-before"]), parse_scores(outputs["score-after"])
    if not {"chrf", "rouge1", "rougeL"} <= before.keys() & after.keys():
        raise RecipeError("no chrF / ROUGE-L lines in the output of the score steps")
    lines += ["", f"The answers to the first {QA_TEST} held-out conversations of the test split "
              "(greedy, 48 new tokens at most) against the reference answers:", "",
              "| | chrF | ROUGE-1 | ROUGE-L |", "|---|---:|---:|---:|",
              f"| before (SmolLM2-135M-Instruct) | {before['chrf']:.2f} | {before['rouge1']:.2f} | "
              f"{before['rougeL']:.2f} |",
              f"| after {ft['steps']} LoRA steps (`runs/recipe-qa/best`) | {after['chrf']:.2f} | "
              f"{after['rouge1']:.2f} | {after['rougeL']:.2f} |"]
    lines += ["", "Greedy answers to held-out questions (test split, never trained on), "
              "48 new tokens at most:", "",
              "| question | reference answer | before (SmolLM2-135M-Instruct) | after (`runs/recipe-qa/best`) |",
              "|---|---|---|---|"]
    lines += [f"| {md_cell(r['question'])} | {md_cell(r['reference'])} | {md_cell(r['before'])} | "
              f"{md_cell(r['after'])} |" for r in rows]
    chat = [json.loads(x) for x in outputs["web-chat"].splitlines() if x.startswith("{")]
    if not chat:
        raise RecipeError("no answers in the output of the web-chat step")
    lines += ["", "`scratchlm serve runs/recipe-qa/best`, asked in its web chat page (headless Chromium; "
              "temperature 0, 48 tokens at most), one conversation:", "",
              "| you | the page shows | the API, same conversation |", "|---|---|---|"]
    lines += [f"| {md_cell(r['question'])} | {md_cell(r['page'])} | "
              f"{'the same' if r['api'].strip() == r['page'] else md_cell(r['api'])} |" for r in chat]
    lines += ["", "![the web chat page](images/qa-web-chat.png)"]
    return "\n".join(lines)


RECIPES: dict[str, Recipe] = {  # the order of docs/recipes/README.md (`run.py all` runs them so)
    "textgen-en": Recipe("textgen-en", "docs/recipes/textgen.md", "English text generation (Shakespeare)",
                         textgen_steps("en"), render_textgen),
    "textgen-zh": Recipe("textgen-zh", "docs/recipes/textgen.md", "Chinese text generation (fortunes-zh)",
                         textgen_steps("zh"), render_textgen),
    "mt-en-fr": Recipe("mt-en-fr", "docs/recipes/translation.md", "Machine translation en-fr (LibreOffice)",
                       mt_steps("fr"), render_mt("fr")),
    "mt-en-zh": Recipe("mt-en-zh", "docs/recipes/translation.md", "Machine translation en-zh (LibreOffice)",
                       mt_steps("zh"), render_mt("zh")),
    "summarize": Recipe("summarize", "docs/recipes/summarization.md",
                        "Summarization (Debian descriptions -> synopsis)", summarize_steps(), render_summarize),
    "qa": Recipe("qa", "docs/recipes/qa.md", "Question answering / dialogue (SmolLM2 LoRA on ChatterBot)",
                 qa_steps(), render_qa),
}
