"""`scratchlm serve` on 127.0.0.1 with a tiny model, driven by the official `openai` client
(and by raw HTTP where the wire format itself is checked). Outputs are compared with
`scratchlm.generate` on the same model directory, in this process."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import openai
import pytest

import scratchlm
from scratchlm.generate.decode import GenerationConfig, TextStream, generate, generate_tokens
from scratchlm.generate.translate import translate_nbest
from scratchlm.tokenizers.chat import render_chat
from tests.serve.conftest import API_KEY, TEMPLATE, Server

NAME = "tiny-chat"  # the default model name: the directory's


@pytest.fixture(scope="module")
def api(template_dir):
    server = Server(template_dir, "--api-key", API_KEY, "--max-body-kb", "64", "--max-tokens", "300")
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=api.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref(template_dir):
    return scratchlm.load(template_dir)


def streamed(ref, prompt: str, cfg: GenerationConfig) -> list[str]:
    """What `generate` streams for the prompt alone, per choice."""
    model, tok = ref
    pieces = [[] for _ in range(cfg.num_samples)]
    generate(model, tok, prompt, cfg, on_text=lambda row, text: pieces[row].append(text))
    return ["".join(p) for p in pieces]


def generated_tokens(ref, prompt: str, cfg: GenerationConfig) -> int:
    """How many tokens generate_tokens samples for the prompt alone (an <eos> included)."""
    import torch

    model, tok = ref
    n = 0
    for step in generate_tokens(model, torch.tensor([tok.encode(prompt)]), config=cfg,
                                eos_id=tok.eos_id):
        n += 1
        if step.item() == tok.eos_id and not cfg.ignore_eos:
            break
    return n


def post(url: str, body: bytes, *, key: str | None = API_KEY, path="/v1/completions"):
    """Raw POST: (status, body bytes)."""
    req = urllib.request.Request(url + path, data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def assert_error_shape(body: bytes, code: str | None = None) -> dict:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    return err


# ----------------------------------------------------------------------------- happy paths
def test_models_and_health(api, client):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    health = api.health()
    assert health["status"] == "ok" and health["model"] == NAME


def test_completion_is_what_generate_gives(client, ref):
    cfg = GenerationConfig(max_new_tokens=20, temperature=0)
    r = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=20, temperature=0)
    assert r.object == "text_completion" and r.model == NAME and len(r.choices) == 1
    assert r.choices[0].text == streamed(ref, "ROMEO:", cfg)[0]
    n = generated_tokens(ref, "ROMEO:", cfg)
    assert r.choices[0].finish_reason == ("length" if n == 20 else "stop")
    _, tok = ref
    assert r.usage.prompt_tokens == len(tok.encode("ROMEO:"))
    assert r.usage.completion_tokens == n and r.usage.total_tokens == r.usage.prompt_tokens + n


def test_streamed_completion_equals_the_whole_one(client):
    kw = dict(model=NAME, prompt="Thou art", max_tokens=25, temperature=0)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # streamed in pieces
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_sse_wire_format_ends_with_done(api):
    body = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 5, "stream": True}).encode()
    status, raw = post(api.url, body, path="/v1/chat/completions")
    assert status == 200
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(e.startswith("data: {") for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat_goes_through_the_chat_template(client, ref):
    model, tok = ref
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Who art thou?"},
                {"role": "assistant", "content": "A ghost."}, {"role": "user", "content": "Why?"}]
    rendered = render_chat(messages, tokenizer=tok, template=TEMPLATE, add_generation_prompt=True)
    assert rendered.endswith("<|user|>Why?\n<|assistant|>")
    cfg = GenerationConfig(max_new_tokens=15, temperature=0)
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=15, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == streamed(ref, rendered, cfg)[0]
    assert r.usage.prompt_tokens == len(tok.encode(rendered))
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=15,
                                                 temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content


def test_n_choices_are_seeded_samples(client, ref):
    kw = dict(model=NAME, prompt="KING:", max_tokens=12, temperature=1.0, n=3, seed=11,
              extra_body={"ignore_eos": True})
    r = client.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.text for c in r.choices]
    assert texts == streamed(ref, "KING:", GenerationConfig(max_new_tokens=12, temperature=1.0,
                                                            num_samples=3, seed=11, ignore_eos=True))
    assert len(set(texts)) > 1
    assert r.usage.completion_tokens == 36
    assert [c.text for c in client.completions.create(**kw).choices] == texts  # the seed
    other = client.completions.create(**{**kw, "seed": 12})
    assert [c.text for c in other.choices] != texts
    chunks = list(client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, n=2, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}


def test_stop_strings_cut_the_text(client):
    kw = dict(model=NAME, prompt="HAMLET:", max_tokens=40, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    starts = [i for i in range(5, len(full) - 2) if "\ufffd" not in full[i : i + 2]]
    assert starts, full
    stop = full[starts[0] : starts[0] + 2]
    cut = client.completions.create(**kw, stop=[stop, "never appears"]).choices[0]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    chunks = list(client.completions.create(**kw, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut.text


def test_max_tokens_ends_with_length(client):
    r = client.completions.create(model=NAME, prompt="x", max_tokens=7, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(api, client, ref):
    before = api.health()
    prompts = [f"Speaker {i}: " + "la " * i for i in range(8)]
    results: dict[int, str] = {}
    start = threading.Barrier(8)

    def one(i: int) -> None:
        start.wait()
        stream = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=40,
                                           temperature=0, stream=True, extra_body={"ignore_eos": True})
        results[i] = "".join(c.choices[0].text for c in stream)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    after = api.wait_idle()
    cfg = GenerationConfig(max_new_tokens=40, temperature=0, ignore_eos=True)
    for i, p in enumerate(prompts):
        assert results[i] == streamed(ref, p, cfg)[0]
    steps = after["steps"] - before["steps"]
    rows = after["row_steps"] - before["row_steps"]
    assert after["tokens"] - before["tokens"] == 8 * 40
    assert rows / steps > 1.5, (rows, steps)  # rows shared decoding steps


# ----------------------------------------------------------------------------- errors
def test_bad_or_missing_key_is_401(api):
    bad = openai.OpenAI(base_url=api.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.completions.create(model=NAME, prompt="x", max_tokens=1)
    assert e.value.status_code == 401
    body = json.dumps({"model": NAME, "prompt": "x"}).encode()
    for key in (None, "wrong", API_KEY + "x"):
        status, raw = post(api.url, body, key=key)
        assert status == 401
        assert assert_error_shape(raw, "invalid_api_key")["type"] == "invalid_request_error"
    assert post(api.url, body)[0] == 200


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 301}, "max_tokens"),  # over the server's --max-tokens
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"seed": 1.5}, "seed"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ({"prompt": "x" * 1100}, "prompt"),  # longer than the model's context (1024)
    ({"prompt": [[1, 2], [10 ** 6]]}, "prompt"),
])
def test_bad_parameters_are_400(client, kwargs, param):
    kw = {"model": NAME, "prompt": "x", "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**kw)
    assert e.value.status_code == 400
    err = e.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    if param == "prompt" and "x" in kw["prompt"]:
        assert err["code"] == "context_length_exceeded"


@pytest.mark.parametrize("messages", [[], [{"role": "tool", "content": "x"}],
                                      [{"role": "user", "content": 5}], "hello"])
def test_bad_messages_are_400(client, messages):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=messages, max_tokens=2)
    assert e.value.body["param"] == "messages"


def test_unknown_model_and_path_are_404(api, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert e.value.body["code"] == "model_not_found"
    status, raw = post(api.url, b"{}", path="/v1/embeddings")
    assert status == 404 and assert_error_shape(raw)


def test_invalid_json_is_400(api):
    for body in (b"{not json", b"[1, 2]", b'{"prompt": "x"}'):
        status, raw = post(api.url, body)
        assert status == 400, body
        assert_error_shape(raw)


def test_oversize_body_is_413(api, client):
    with pytest.raises(openai.APIStatusError) as e:  # over --max-body-kb 64
        client.completions.create(model=NAME, prompt="x" * 70_000, max_tokens=1)
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
    # The same without a Content-Length (chunked): the server counts what it reads.
    u = urlsplit(api.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    body = json.dumps({"model": NAME, "prompt": "y" * 70_000}).encode()
    conn.request("POST", "/v1/completions", body=iter([body[:30_000], body[30_000:]]),
                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
                 encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and assert_error_shape(r.read(), "request_too_large")
    conn.close()


# ----------------------------------------------------------------------------- capacity
@pytest.fixture(scope="module")
def one_slot(gpt_dir):
    server = Server(gpt_dir, "--slots", "1", "--max-waiting", "1")
    yield server
    server.close()


def wait_for(server: Server, **expected) -> dict:
    """/health once it shows the expected counters."""
    deadline = time.monotonic() + 30
    while True:
        h = server.health()
        if all(h[k] == v for k, v in expected.items()):
            return h
        assert time.monotonic() < deadline, f"/health never showed {expected}: {h}"
        time.sleep(0.01)


def test_full_server_is_503_and_a_disconnect_frees_the_slot(one_slot):
    """One slot and a waiting line of one: a long stream takes the slot, the next request
    waits, the one after is refused (503, OpenAI's error shape, Retry-After); the stream's
    client goes away mid-stream, which frees the slot for the waiting request."""
    url = one_slot.url
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    long = {"model": "tiny-gpt", "prompt": "a", "max_tokens": 1000, "ignore_eos": True,
            "temperature": 0}
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps({**long, "stream": True}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.readline().startswith(b"data: {")  # streaming has begun
    waited = {}
    waiter = threading.Thread(target=lambda: waited.update(r=client.completions.create(
        model="tiny-gpt", prompt="b", max_tokens=2)))
    waiter.start()
    wait_for(one_slot, waiting=1, running_rows=1)
    with pytest.raises(openai.APIStatusError) as e:  # the slot is taken, the line is full
        client.completions.create(model="tiny-gpt", prompt="c", max_tokens=2)
    assert e.value.status_code == 503 and e.value.body["code"] == "server_busy"
    assert set(e.value.body) == {"message", "type", "param", "code"}
    assert e.value.response.headers.get("retry-after") == "1"
    assert one_slot.health()["rejected"] == 1
    conn.close()  # the client goes away mid-stream
    waiter.join(60)
    assert waited["r"].usage.completion_tokens >= 1  # the waiting request got the slot
    h = one_slot.wait_idle()
    assert h["cancelled"] == 1 and h["tokens"] < 1000  # stopped long before max_tokens
    # The same for a request that is not streamed: the server notices within a second.
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(long),
                 headers={"Content-Type": "application/json"})
    wait_for(one_slot, running_rows=1)
    conn.close()
    h = one_slot.wait_idle()
    assert h["cancelled"] == 2 and h["tokens"] < 2000
    r = client.completions.create(model="tiny-gpt", prompt="b", max_tokens=2)  # the slot is free
    assert r.usage.completion_tokens >= 1


# ----------------------------------------------------------------------------- translation
def test_encoder_decoder_completions_translate(seq2seq_dir):
    server = Server(seq2seq_dir)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        model, tok = scratchlm.load(seq2seq_dir)
        sources = ["Click OK.", "Open the file"]
        r = client.completions.create(model="tiny-mt", prompt=sources, max_tokens=50, temperature=0)
        best = translate_nbest(model, tok, sources, config=GenerationConfig(max_new_tokens=50,
                                                                            temperature=0))
        for choice, nbest in zip(r.choices, best, strict=True):
            stream = TextStream(tok, [])
            expected = "".join(stream.push(t) for t in nbest[0][0]) + stream.finish()
            assert choice.text == expected
        chat = client.chat.completions.create(
            model="tiny-mt", messages=[{"role": "user", "content": sources[0]}], max_tokens=50,
            temperature=0)
        assert chat.choices[0].message.content == r.choices[0].text
    finally:
        server.close()


def test_serve_user_errors_are_one_clean_line(gpt_dir, tmp_path, capfd):
    import signal
    import socket
    import subprocess
    import sys

    from tests.cli.test_cli import cli_in_process
    from tests.serve.conftest import ENV

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "scratchlm", "serve", *map(str, args)],
                              capture_output=True, text=True, env=ENV, timeout=120)

    def serve_in_process(*args):
        """The same `main` in this process; a server that starts instead of refusing (the
        bug) is stopped by an alarm after 120 s, as the subprocess's timeout would."""
        def late(signum, frame):
            raise TimeoutError(f"scratchlm serve {args} did not stop with an error in 120 s")

        old = signal.signal(signal.SIGALRM, late)
        signal.alarm(120)
        try:
            return cli_in_process(capfd, "serve", *args)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    with socket.socket() as taken:  # the real command: its exit code and its stderr
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = serve(gpt_dir, "--port", taken.getsockname()[1])
    for proc, needle in ((busy, "cannot listen on 127.0.0.1"),
                         (serve_in_process(tmp_path / "nothing"), "does not exist"),
                         (serve_in_process(gpt_dir, "--slots", "0"), "--slots must be at least 1"),
                         (serve_in_process(gpt_dir, "--cors-origin", "localhost:3000/app"),
                          "is not an origin")):
        assert proc.returncode == 1 and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
