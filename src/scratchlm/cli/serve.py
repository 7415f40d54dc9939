"""Serve a model over HTTP: an OpenAI-compatible API and a web chat page.
`scratchlm serve MODEL_DIR [--host 127.0.0.1 --port 8000 --api-key KEY --model-name NAME
--chat-template auto|builtin|none --slots 32 --max-waiting 64 --max-tokens 1024 ...]`.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (with
`stream: true`), GET /health, and the chat page at /. Concurrent requests are decoded together
(batches that rows join and leave between steps, at the same position in a Transformer batch;
see docs/serving.md). --slots bounds the rows decoding at once and --max-waiting the requests
waiting for a slot; past both a request gets 503 with Retry-After. The server listens on
127.0.0.1 (this machine only) unless --host says otherwise; give an API key (--api-key or
SCRATCHLM_API_KEY) before listening on a network. Without a key, no web page can drive it:
JSON bodies only, its own Host names only (--allowed-host adds one), no CORS unless
--cors-origin (serve/guard.py). --port 0 picks a free port; the address is printed either
way. MODEL_DIR may be a LoRA adapter directory, applied to its base model."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import sys
from pathlib import Path

import torch

from scratchlm.cli.generate import add_precision_arguments, load_for_inference
from scratchlm.errors import ScratchLMError
from scratchlm.registry import is_encoder_decoder
from scratchlm.tokenizers.chat import TEMPLATE_MODES, chat_template_for

HELP = "serve a model: an OpenAI-compatible HTTP API and a web chat page"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    p.add_argument("--api-key", default=os.environ.get("SCRATCHLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $SCRATCHLM_API_KEY)")
    p.add_argument("--model-name", help="the model id clients use (default: from MODEL_DIR)")
    p.add_argument("--chat-template", choices=TEMPLATE_MODES, default="auto",
                   help="auto: the model's own, else plain continuation; builtin: scratchlm's "
                        "(models fine-tuned with `scratchlm finetune`); none: plain continuation")
    p.add_argument("--slots", type=int, default=32,
                   help="rows decoded at once (each choice of each request takes one)")
    p.add_argument("--max-waiting", type=int, default=64,
                   help="requests that may wait for a slot; more get 503")
    p.add_argument("--batches", type=int, default=2,
                   help="decoding batches stepped in turn (see docs/serving.md)")
    p.add_argument("--max-tokens", type=int, default=1024, help="the largest max_tokens allowed")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="the longest prompt allowed (default: the model's context)")
    p.add_argument("--max-n", type=int, default=8, help="the most choices (n) per request")
    p.add_argument("--max-body-kb", type=int, default=1024, help="the largest request body")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="without an API key, also answer requests whose Host header is NAME "
                        "(repeatable; localhost, 127.0.0.1, [::1] and --host always are)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API "
                        "(repeatable; default: only the server's own chat page)")
    p.add_argument("--device", default="cpu")
    add_precision_arguments(p)
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch threads for decoding (default: the CPUs less one, which is left "
                        "to the HTTP side; see docs/serving.md)")


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


def default_model_name(model_dir: str) -> str:
    """runs/demo/final -> "demo", runs/demo/best -> "demo-best", model.gguf -> "model"."""
    path = Path(model_dir).resolve()
    if path.is_file():
        return path.stem
    if path.name == "final" and path.parent.name:
        return path.parent.name
    if path.name in ("best", "last") and path.parent.name:
        return f"{path.parent.name}-{path.name}"
    return path.name


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ScratchLMError(f"cannot listen on {host}:{port} ({e.strerror}); pick another "
                             "--port (0: any free one)") from None
    sock.listen(1024)  # connections queue from now on, before the server loop starts
    return sock


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import uvicorn

    from scratchlm.serve.app import ServerConfig, create_app
    from scratchlm.serve.batching import Engine

    for name in ("slots", "max_tokens", "max_n", "max_body_kb", "batches", "threads"):
        if getattr(args, name) < 1:
            raise ScratchLMError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_waiting < 0:
        raise ScratchLMError("--max-waiting must be >= 0")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_for_inference(args, header=True)
    template = chat_template_for(tokenizer, args.chat_template)
    name = args.model_name or default_model_name(args.model_dir)
    engine = Engine(model, tokenizer, max_rows=args.slots, max_waiting=args.max_waiting,
                    max_batches=args.batches)
    for origin in args.cors_origin:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ScratchLMError(f"--cors-origin {origin!r} is not an origin: give scheme://host"
                                 "[:port] with no path, e.g. http://localhost:3000")
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    config = ServerConfig(model_name=name, api_key=args.api_key or None,
                          max_body_bytes=args.max_body_kb * 1024,
                          max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                          max_n=args.max_n, chat_template=template, host=host, port=port,
                          allowed_hosts=(*args.allowed_host, args.host),  # a name or address
                          cors_origins=tuple(args.cors_origin))
    app = create_app(model, tokenizer, config, engine=engine)
    shown = f"[{host}]" if ":" in host else host
    cfg = model.config
    print(f"serving {name} ({cfg.family}, context {model.max_context or 'unlimited'}, "
          f"{args.threads} torch thread{'s' * (args.threads > 1)}) at http://{shown}:{port}/  "
          f"(API: http://{shown}:{port}/v1)", flush=True)
    if is_encoder_decoder(model):
        print("an encoder-decoder: completions translate the prompt, chat translates the last "
              "user message", flush=True)
    elif template is None:
        print("no chat template: /v1/chat/completions continues the conversation as plain text "
              "(--chat-template builtin for models fine-tuned here)", flush=True)
    if config.api_key is None and not _loopback(host):
        print(f"warning: listening on {host} without an API key: anyone who can reach it may use "
              "it (--api-key KEY); requests must name it by address or --allowed-host",
              file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
