"""lm-eval-harness scores a model through `scratchlm serve`, as a user would run it: its
`local-completions` model (prompts as token ids from the model directory's own tokenizer.json,
`echo` + `logprobs`) on a small multiple-choice task written here (a task YAML over a local
JSONL file: nothing comes from the hub). Each of its per-choice log-likelihoods equals
`scratchlm.score` of the same (context, continuation) pair within 1e-4, and so does its
is-greedy flag. Skipped, saying so, where lm-eval is not installed (pip install -e '.[dev]')."""

from __future__ import annotations

import json

import pytest

import scratchlm
from tests.serve.conftest import Server

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval test skipped: lm-eval is not installed "
                              "(pip install -e '.[dev]')")

DOCS = [
    {"context": "ROMEO: What light through yonder window", "choices": ["breaks", "sings", "runs"],
     "gold": 0},
    {"context": "To be, or not to be,", "choices": ["that is the question", "a fish", "yes"],
     "gold": 0},
    {"context": "KING:", "choices": ["Thou art", "My lord", "Zzz"], "gold": 1},
    {"context": "我喜欢吃", "choices": ["苹果", "月亮", "书"], "gold": 0},
]
TASK = """task: scratchlm_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def server(gpt_dir):
    s = Server(gpt_dir, "--max-tokens", "16")
    yield s
    s.close()


def test_lm_eval_loglikelihoods_equal_scratchlm_score(server, gpt_dir, tmp_path, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    model, tok = scratchlm.load(gpt_dir)
    results = simple_evaluate(
        model="local-completions",
        model_args={"base_url": server.url + "/v1/completions", "model": "tiny-gpt",
                    "tokenizer": str(gpt_dir), "tokenizer_backend": "huggingface",
                    "max_length": model.max_context, "num_concurrent": 1, "max_retries": 1},
        tasks=["scratchlm_tiny_mc"], task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True, cache_requests=False, num_fewshot=0)
    samples = results["samples"]["scratchlm_tiny_mc"]
    assert len(samples) == len(DOCS)
    pairs, theirs = [], []
    for sample in samples:
        for (context, continuation), (loglik, greedy) in zip(
                sample["arguments"], sample["filtered_resps"], strict=True):
            pairs.append((context, continuation))
            theirs.append((loglik, greedy))
    assert len(pairs) == sum(len(d["choices"]) for d in DOCS)
    assert all(c.startswith(" ") for _, c in pairs)  # lm-eval's target delimiter
    ours = scratchlm.score(model, tok, pairs)
    for (lp, greedy), s in zip(theirs, ours, strict=True):
        assert lp == pytest.approx(s.logprob, abs=1e-4)
        assert greedy == s.is_greedy
    assert len({round(lp, 3) for lp, _ in theirs}) > 1  # real, differing numbers
    acc = results["results"]["scratchlm_tiny_mc"]["acc,none"]
    best = [max(range(len(d["choices"])), key=lambda j, i=i: ours[3 * i + j].logprob)
            for i, d in enumerate(DOCS)]
    assert acc == pytest.approx(sum(b == d["gold"] for b, d in zip(best, DOCS, strict=True)) / len(DOCS))
    assert "Traceback" not in "".join(server.output)
