"""The HTTP part of the bad-input census (issue 14): bad requests to `scratchlm serve`, each
answered with its status code and OpenAI's error body ({"error": {message, type, param, code}})
whose message names the problem, and no traceback in the server's log. Two servers: a keyless
one on 127.0.0.1 (what a web page must not drive: content type, Host, Origin) and one with an
API key. The last tests check what must still work: the chat page's own requests, an
--allowed-host name, a --cors-origin page, and a keyed server's lenience (today's behaviour).
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.serve.conftest import API_KEY, Server, gpt_dir, tokenizer  # noqa: F401 (fixtures)

NAME = "tiny-gpt"
DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
CORS = "http://localhost:3000"
DEEP = b'{"model": "tiny-gpt", "prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
BIG = json.dumps({"model": NAME, "prompt": "y" * 600_000}).encode()  # over --max-body-kb 512


@pytest.fixture(scope="module")
def servers(gpt_dir):  # noqa: F811
    keyless = Server(gpt_dir, "--max-body-kb", "512", "--max-tokens", "50", "--max-n", "4",
                     "--max-prompt-tokens", "200", "--allowed-host", "lab.example",
                     "--cors-origin", CORS)
    try:
        keyed = Server(gpt_dir, "--api-key", API_KEY)
    except Exception:
        keyless.close()
        raise
    yield {"keyless": keyless, "keyed": keyed}
    keyless.close()
    keyed.close()


def call(server: Server, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One raw request (headers exactly as given; the default content type is JSON)."""
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    h = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=body, headers={k: v for k, v in h.items() if v is not None})
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def completion(**fields) -> bytes:
    return json.dumps({"model": NAME, "prompt": "x", "max_tokens": 2, **fields}).encode()


def chat(**fields) -> bytes:
    return json.dumps({"model": NAME, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 2, **fields}).encode()


C, CHAT = "/v1/completions", "/v1/chat/completions"
# class -> [(id, server, method, path, body, headers, status, words the message must contain)]
GROUPS = {
    "body": [
    ("not-json", "keyless", "POST", C, b"{not json", {}, 400, "not valid JSON"),
    ("not-utf8", "keyless", "POST", C, b'{"model": "\xff\xfe"}', {}, 400, "not valid JSON"),
    ("json-array", "keyless", "POST", C, b"[1, 2]", {}, 400, "JSON object"),
    ("no-model", "keyless", "POST", C, b'{"prompt": "x"}', {}, 400, "'model'"),
    ("model-not-string", "keyless", "POST", C, completion(model=5), {}, 400, "'model'"),
    ("unknown-model", "keyless", "POST", C, completion(model="gpt-4"), {}, 404, "gpt-4"),
    ("deep-nesting-200k", "keyless", "POST", C, DEEP, {}, 400, "nests"),
    ("deep-nesting-65", "keyless", "POST", C, completion(metadata=json.loads("[" * 65 + "]" * 65)),
     {}, 400, "nests"),
    ("huge-body", "keyless", "POST", C, BIG, {}, 413, "larger than"),
    ],
    "sampling parameters": [
    ("temperature-high", "keyless", "POST", C, completion(temperature=3), {}, 400, "temperature"),
    ("temperature-string", "keyless", "POST", C, completion(temperature="hot"), {}, 400, "temperature"),
    ("temperature-negative", "keyless", "POST", C, completion(temperature=-0.1), {}, 400, "temperature"),
    ("top_p-zero", "keyless", "POST", C, completion(top_p=0), {}, 400, "top_p"),
    ("top_p-high", "keyless", "POST", C, completion(top_p=1.5), {}, 400, "top_p"),
    ("min_p-high", "keyless", "POST", C, completion(min_p=2), {}, 400, "min_p"),
    ("repetition_penalty-zero", "keyless", "POST", C, completion(repetition_penalty=0), {}, 400,
     "repetition_penalty"),
    ("max_tokens-zero", "keyless", "POST", C, completion(max_tokens=0), {}, 400, "max_tokens"),
    ("max_tokens-over-limit", "keyless", "POST", C, completion(max_tokens=51), {}, 400, "max_tokens"),
    ("max_tokens-float", "keyless", "POST", C, completion(max_tokens=2.5), {}, 400, "max_tokens"),
    ("n-zero", "keyless", "POST", C, completion(n=0), {}, 400, "'n'"),
    ("n-over-limit", "keyless", "POST", C, completion(n=5), {}, 400, "'n'"),
    ("best_of", "keyless", "POST", C, completion(best_of=3), {}, 400, "best_of"),
    ("seed-float", "keyless", "POST", C, completion(seed=1.5), {}, 400, "seed"),
    ("stream-string", "keyless", "POST", C, completion(stream="yes"), {}, 400, "stream"),
    ("unsupported-penalty", "keyless", "POST", C, completion(presence_penalty=0.5), {}, 400,
     "presence_penalty"),
    ("unknown-argument", "keyless", "POST", C, completion(frobnicate=1), {}, 400, "frobnicate"),
    ],
    "stop strings": [
    ("stop-five", "keyless", "POST", C, completion(stop=["a", "b", "c", "d", "e"]), {}, 400, "stop"),
    ("stop-empty", "keyless", "POST", C, completion(stop=""), {}, 400, "stop"),
    ("stop-number", "keyless", "POST", C, completion(stop=5), {}, 400, "stop"),
    ],
    "logprobs and echo": [
    ("logprobs-high", "keyless", "POST", C, completion(logprobs=21), {}, 400, "logprobs"),
    ("logprobs-negative", "keyless", "POST", C, completion(logprobs=-1), {}, 400, "logprobs"),
    ("logprobs-string", "keyless", "POST", C, completion(logprobs="yes"), {}, 400, "logprobs"),
    ("echo-string", "keyless", "POST", C, completion(echo="yes"), {}, 400, "echo"),
    ("echo-stream-prompt-too-long", "keyless", "POST", C,
     completion(prompt="x" * 250, echo=True, logprobs=1, max_tokens=0, stream=True), {}, 400,
     "250 tokens"),
    ("echo-prompt-too-long", "keyless", "POST", C,
     completion(prompt="x" * 250, echo=True, max_tokens=0), {}, 400, "250 tokens"),
    ("chat-top_logprobs-without-logprobs", "keyless", "POST", CHAT, chat(top_logprobs=3), {}, 400,
     "top_logprobs"),
    ("chat-logprobs-number", "keyless", "POST", CHAT, chat(logprobs=2), {}, 400, "logprobs"),
    ("chat-top_logprobs-high", "keyless", "POST", CHAT, chat(logprobs=True, top_logprobs=21), {},
     400, "top_logprobs"),
    ],
    "prompts and messages": [
    ("prompt-too-long", "keyless", "POST", C, completion(prompt="x" * 250), {}, 400, "250 tokens"),
    ("prompt-number", "keyless", "POST", C, completion(prompt=5), {}, 400, "'prompt'"),
    ("prompt-empty-list", "keyless", "POST", C, completion(prompt=[]), {}, 400, "'prompt'"),
    ("prompt-id-outside-vocab", "keyless", "POST", C, completion(prompt=[1, 10**6]), {}, 400,
     "vocabulary"),
    ("messages-empty", "keyless", "POST", CHAT, chat(messages=[]), {}, 400, "messages"),
    ("messages-string", "keyless", "POST", CHAT, chat(messages="hello"), {}, 400, "messages"),
    ("messages-role-tool", "keyless", "POST", CHAT,
     chat(messages=[{"role": "tool", "content": "x"}]), {}, 400, "'tool'"),
    ("messages-no-role", "keyless", "POST", CHAT, chat(messages=[{"content": "x"}]), {}, 400, "role"),
    ("messages-item-not-object", "keyless", "POST", CHAT, chat(messages=["x"]), {}, 400, "messages[0]"),
    ("messages-content-number", "keyless", "POST", CHAT,
     chat(messages=[{"role": "user", "content": 5}]), {}, 400, "content"),
    ("messages-image-part", "keyless", "POST", CHAT,
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     {}, 400, "text parts"),
    ],
    "web page (content type, Host, Origin)": [
    ("content-type-text-plain", "keyless", "POST", C, completion(), {"Content-Type": "text/plain"},
     415, "application/json"),
    ("content-type-form", "keyless", "POST", C, completion(),
     {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ("content-type-missing", "keyless", "POST", C, completion(), {"Content-Type": None}, 415,
     "application/json"),
    ("host-foreign", "keyless", "POST", C, completion(), {"Host": "evil.example"}, 400, "Host"),
    ("host-rebinding-with-port", "keyless", "GET", "/v1/models", None,
     {"Host": "attacker.example:8000"}, 400, "Host"),
    ("host-wrong-port", "keyless", "GET", "/", None, {"Host": "localhost:1"}, 400, "Host"),
    ("host-garbage", "keyless", "GET", "/health", None, {"Host": "a:b:c"}, 400, "Host"),
    ("origin-foreign", "keyless", "POST", C, completion(), {"Origin": "http://evil.example"}, 403,
     "evil.example"),
    ("origin-null", "keyless", "POST", C, completion(), {"Origin": "null"}, 403, "null"),
    ("preflight-foreign", "keyless", "OPTIONS", C, None,
     {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}, 403, "evil.example"),
    ],
    "paths and methods": [
    ("unknown-path", "keyless", "POST", "/v1/embeddings", b"{}", {}, 404, "Not Found"),
    ("wrong-method", "keyless", "GET", C, None, {}, 405, "Method Not Allowed"),
    ("unknown-model-card", "keyless", "GET", "/v1/models/gpt-4", None, {}, 404, "gpt-4"),
    ],
    "API key": [
    ("key-missing", "keyed", "POST", C, completion(), {}, 401, "API key"),
    ("key-wrong", "keyed", "POST", C, completion(), {"Authorization": "Bearer nope"}, 401, "API key"),
    ("key-not-bearer", "keyed", "POST", C, completion(), {"Authorization": f"Basic {API_KEY}"}, 401,
     "API key"),
    ("keyed-deep-nesting", "keyed", "POST", C, DEEP, {"Authorization": f"Bearer {API_KEY}"}, 400,
     "nests"),
    ],
}
CASES = [case for cases in GROUPS.values() for case in cases]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(servers, case):
    _, which, method, path, body, headers, status, words = case
    server = servers[which]
    got, response_headers, raw = call(server, method, path, body, headers)
    assert got == status, raw
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    assert "access-control-allow-origin" not in response_headers
    assert "Traceback" not in "".join(server.output)


def test_census_is_large_and_documented():
    """docs/reliability.md's HTTP table has these counts."""
    assert len(CASES) >= 35 and len({c[0] for c in CASES}) == len(CASES)
    text = DOC.read_text(encoding="utf-8")
    for cls, cases in GROUPS.items():
        assert re.search(rf"\|\s*{re.escape(cls)}\s*\|\s*{len(cases)}\s*\|", text), f"docs: {cls}"
    assert re.search(rf"\|\s*\*\*HTTP, all\*\*\s*\|\s*\*\*{len(CASES)}\*\*\s*\|", text)


def test_what_must_still_work(servers):
    keyless, keyed = servers["keyless"], servers["keyed"]
    port = urlsplit(keyless.url).port
    # The chat page's own requests: same origin, JSON, a Host naming the server.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"lab.example:{port}"):
        status, _, page = call(keyless, "GET", "/", headers={"Host": host})
        assert status == 200 and b"<html" in page.lower()
    status, headers, raw = call(keyless, "POST", C, completion(),
                                {"Origin": f"http://127.0.0.1:{port}",
                                 "Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and json.loads(raw)["choices"]
    assert "access-control-allow-origin" not in headers  # same origin: no CORS needed
    # A --cors-origin page: its preflight is answered and its replies may be read.
    status, headers, _ = call(keyless, "OPTIONS", C, headers={
        "Origin": CORS, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 200 and headers["access-control-allow-origin"] == CORS
    status, headers, _ = call(keyless, "POST", C, completion(), {"Origin": CORS})
    assert status == 200 and headers["access-control-allow-origin"] == CORS
    # With an API key: today's lenience (any Host, any content type), no CORS.
    status, headers, raw = call(keyed, "POST", C, completion(), {
        "Authorization": f"Bearer {API_KEY}", "Content-Type": "text/plain", "Host": "anything.example"})
    assert status == 200 and json.loads(raw)["choices"]
    assert "access-control-allow-origin" not in headers
    for server in (keyless, keyed):
        assert "Traceback" not in "".join(server.output)
