"""The QA recipe's web-chat step (`python recipes/tools.py web-chat MODEL --question Q ...`):
`scratchlm serve` the model, ask in its web chat page in headless Chromium (Debian's
chromium + chromium-driver, driven by Selenium; no browser is downloaded), read the answers
off the page, ask the API the same conversation, save a screenshot."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


class _Server:
    """`scratchlm serve MODEL --port 0` in a subprocess, until close()."""

    def __init__(self, model: str, *, timeout: float = 300) -> None:
        import queue
        import subprocess
        import threading
        import time

        from scratchlm.errors import ScratchLMError

        env = {k: v for k, v in os.environ.items() if k != "SCRATCHLM_API_KEY"}  # the page sends none
        self.proc = subprocess.Popen([sys.executable, "-m", "scratchlm", "serve", model, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []

        def pump() -> None:
            for line in self.proc.stdout:
                self.output.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is None and time.monotonic() < deadline:
                    continue
                self.close()
                last = (self.output or ["no output"])[-1].strip()
                raise ScratchLMError(f"scratchlm serve {model} did not start: {last}") from None
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
                return

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _api_answer(url: str, model: str, messages: list[dict], max_tokens: int) -> str:
    import urllib.request

    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    from urllib.error import HTTPError

    from scratchlm.errors import ScratchLMError

    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())["choices"][0]["message"]["content"]
    except HTTPError as e:
        raise ScratchLMError(f"the API answered {e.code}: {e.read().decode(errors='replace')}") from None


def headless_chromium(width: int, height: int):
    """A Selenium driver of Debian's headless Chromium (never downloads a browser or driver)."""
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}"):
        options.add_argument(a)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def web_chat(args: argparse.Namespace) -> int:
    from scratchlm.errors import ScratchLMError
    from scratchlm.fileio import atomic_file

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise ScratchLMError(f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}); "
                             "`make test-browser` installs it with apt-get (chromium chromium-driver)")
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        raise ScratchLMError("selenium is not installed; pip install -e '.[dev]'") from None
    server = _Server(args.model)
    driver = None
    try:
        driver = headless_chromium(1100, 900)
        by_id = lambda name: driver.find_element(By.ID, name)  # noqa: E731
        wait = WebDriverWait(driver, 600, poll_frequency=0.1)
        driver.get(server.url + "/")
        wait.until(lambda d: by_id("status").text == "ready")
        model_id = by_id("model").text  # the id the page asks for, from /v1/models
        for name, value in (("temperature", "0"), ("max-tokens", str(args.max_tokens))):
            by_id(name).clear()
            by_id(name).send_keys(value)
        rows = []
        for i, q in enumerate(args.question):
            by_id("message").send_keys(q)
            by_id("send").click()
            wait.until(lambda d, n=2 * (i + 1): len(d.find_elements(By.CSS_SELECTOR, ".msg")) == n)
            wait.until(lambda d: by_id("send").is_enabled())
            page = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[-1].text
            rows.append({"question": q, "page": page, "status": by_id("status").text})
        if args.screenshot:
            png = driver.get_screenshot_as_png()
            with atomic_file(args.screenshot, mode="wb") as f:
                f.write(png)
        history: list[dict] = []
        for row in rows:  # the same conversation through the API, greedy: the same answers
            history.append({"role": "user", "content": row["question"]})
            row["api"] = _api_answer(server.url, model_id, history, args.max_tokens)
            history.append({"role": "assistant", "content": row["page"]})
            print(json.dumps(row, ensure_ascii=False))
    finally:
        if driver is not None:
            driver.quit()
        server.close()
    return 0
