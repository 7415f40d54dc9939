"""ChatterBot YAML -> chat JSONL with fixed splits (synthetic corpus; no network)."""

import json

from scratchlm.data.chatterbot import build, conversations_to_chats, split_of

YAML = """categories:
- test
conversations:
- - Hello
  - Hi there
- - How are you?
  - Fine.
  - Good to hear
  - Thanks
- - Unanswered question, then an answer
  - An answer
  - and a dangling line
- - Only one line
- - ''
  - empty user line
"""


def test_conversations_become_alternating_chats():
    import yaml

    chats = conversations_to_chats(yaml.safe_load(YAML)["conversations"])
    assert [len(c["messages"]) for c in chats] == [2, 4, 2]
    assert chats[1]["messages"] == [
        {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine."},
        {"role": "user", "content": "Good to hear"}, {"role": "assistant", "content": "Thanks"}]
    assert chats[2]["messages"][-1] == {"role": "assistant", "content": "An answer"}


def test_build_writes_fixed_splits(tmp_path):
    many = "conversations:\n" + "".join(f"- - question {i}\n  - answer {i}\n" for i in range(400))
    many += "".join(f"- - question 7\n  - another answer {i}\n" for i in range(3))
    counts = build({"a.yml": YAML, "b.yml": many}, tmp_path / "out")
    rows = {s: [json.loads(x) for x in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in rows.items()} == counts
    assert sum(counts.values()) == 3 + 403
    assert 5 <= counts["val"] <= 40 and 5 <= counts["test"] <= 40  # ~5% each
    # the same question is always in the same split, and the split is a pure function
    where = {s for s, r in rows.items() for c in r if c["messages"][0]["content"] == "question 7"}
    assert len(where) == 1
    assert all(split_of(c) == s for s, r in rows.items() for c in r)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["format"] == "chat" and meta["counts"] == counts
