"""What keeps a server without an API key from being driven by a web page, and the bound on
JSON nesting every server keeps.

A keyless server on 127.0.0.1 trusts whoever can reach it: this machine. A web page open in a
browser on this machine can reach it too, in two ways this module closes:

- a cross-site form or `fetch` POST with a "simple" content type (text/plain) is sent without
  asking the server first (no CORS preflight): `read_json` refuses any body that is not
  `application/json` (415), which a page on another origin cannot send without a preflight,
  and the server answers no preflight unless `--cors-origin` names the page's origin;
- DNS rebinding (a page's own host name re-pointed at 127.0.0.1, so its scripts may read the
  replies): only Host headers naming this server (the bound address, localhost, 127.0.0.1,
  [::1], plus `--allowed-host` names) are served (400), and a request whose Origin is neither
  this server nor a `--cors-origin` is refused (403).

With an API key none of this applies (a page cannot send the key it does not have, and the
Authorization header needs a preflight), except the nesting bound: a JSON body nested deeper
than MAX_JSON_DEPTH is refused (400) before the parser's recursion could blow up on it.

    app = Guard(app, hosts={"localhost", "127.0.0.1", "[::1]"}, port=8000, origins=set())
"""

from __future__ import annotations

import json
import re

import numpy as np

MAX_JSON_DEPTH = 64
LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # a JSON string (its brackets do not nest)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, counted without parsing it
    (strings removed, then a running count of brackets), so a body of 200,000 `[` costs one
    pass instead of a RecursionError. Invalid JSON gives some number; the parser refuses it."""
    a = np.frombuffer(_STRING.sub(b"", body), dtype=np.uint8)
    step = np.isin(a, (ord("["), ord("{"))).astype(np.int64) - np.isin(a, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def is_json(content_type: str | None) -> bool:
    """`application/json`, with or without parameters (`; charset=utf-8`)."""
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header as (name, port): "localhost:8000" -> ("localhost", 8000); "[::1]:80" ->
    ("[::1]", 80); None where it is not one."""
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]\s/@]+)(?::(\d{1,5}))?", value.strip())
    if m is None:
        return None
    return m.group(1).lower().rstrip("."), int(m.group(2)) if m.group(2) else None


def host_names(bound: str, extra: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The names a keyless server answers to: localhost, the loopback addresses, the address
    it listens on and the `--allowed-host` names (IPv6 addresses in brackets, as a Host header
    writes them; never a wildcard such as 0.0.0.0, which names no one machine)."""
    names = set(LOCAL_NAMES)
    for name in (bound, *extra):
        name = name.strip().lower().rstrip(".")
        if name.strip("[]") not in ("0.0.0.0", "::", ""):
            names.add(f"[{name}]" if ":" in name and not name.startswith("[") else name)
    return names


class Guard:
    """ASGI middleware: the Host and Origin checks of a keyless server (`hosts` None: any
    Host, any Origin, as with an API key). `origins` are the `--cors-origin`s."""

    def __init__(self, app, *, hosts: set[str] | None, port: int | None, origins: set[str]) -> None:
        self.app, self.hosts, self.port, self.origins = app, hosts, port, origins

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.hosts is None:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        parsed = split_host(host)
        if parsed is None or parsed[0] not in self.hosts or (
                parsed[1] is not None and self.port is not None and parsed[1] != self.port):
            return await _send_error(send, 400, f"Host header {host!r} does not name this server; "
                                     "start it with --allowed-host NAME to serve that name",
                                     code="invalid_host")
        origin = headers.get("origin")
        if origin is not None and origin not in self.origins and origin not in (
                f"http://{host}", f"https://{host}"):
            return await _send_error(send, 403, f"requests from the web page at {origin!r} are "
                                     "not allowed; start the server with --cors-origin ORIGIN "
                                     "to allow them", code="origin_not_allowed")
        return await self.app(scope, receive, send)


async def _send_error(send, status: int, message: str, *, code: str) -> None:
    body = json.dumps(error_body(message, type="invalid_request_error", code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
