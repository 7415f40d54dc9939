"""The web chat page end to end in headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium; no browser is downloaded): load the page, give the API key, send a
message, watch the reply stream in, press Stop, and check that the server freed the slot.

Skipped, saying so, where Chromium is not installed: `make test-browser` installs it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.serve.conftest import API_KEY, Server

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and DRIVER.exists()):
    pytest.skip("browser test skipped: headless Chromium is not installed (/usr/bin/chromium, "
                "/usr/bin/chromedriver); `make test-browser` installs it",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="browser test skipped: selenium "
                                "is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(talker_dir):
    # The talker never writes <eos>, so a reply runs to max tokens: long enough to stop.
    s = Server(talker_dir, "--api-key", API_KEY, "--max-tokens", "100000")
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    from recipes.web_chat import headless_chromium

    driver = headless_chromium(1200, 600)  # a short window: the reply overflows the log sooner
    yield driver
    driver.quit()


def test_chat_page_streams_a_reply_and_stops_it(server, browser):
    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    browser.get(server.url + "/")
    wait.until(lambda d: "API key" in by_id("status").text)  # /v1 wants the key
    by_id("api-key").send_keys(API_KEY, Keys.TAB)  # "change" -> the page loads the model
    wait.until(lambda d: by_id("status").text == "ready")
    assert by_id("model").text == "talker"
    assert "no chat template" in by_id("note").text
    by_id("max-tokens").clear()
    by_id("max-tokens").send_keys("100000")
    by_id("message").send_keys("Tell me a story")
    by_id("send").click()

    reply = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant .text"))
    assert browser.find_element(By.CSS_SELECTOR, ".msg.user .text").text == "Tell me a story"
    wait.until(lambda d: len(reply.text) >= 20)
    first, stop_at = len(reply.text), by_id("stop").location
    wait.until(lambda d: len(reply.text) > first)  # still growing: streamed, not all at once
    wait.until(lambda d: by_id("log").get_property("scrollHeight") > by_id("log").size["height"])
    assert by_id("stop").location == stop_at  # a growing reply scrolls; the button stays put
    assert by_id("stop").is_enabled() and not by_id("send").is_enabled()
    assert server.health()["running_rows"] == 1

    by_id("stop").click()
    wait.until(lambda d: by_id("send").is_enabled() and not by_id("stop").is_enabled())
    assert by_id("status").text == "stopped"
    assert browser.find_element(By.CSS_SELECTOR, ".msg.assistant .tag").text == "stopped"
    health = server.wait_idle()  # the aborted request freed its slot
    assert health["cancelled"] == 1 and health["tokens"] < 100000
    stopped_at = reply.text
    time.sleep(0.5)
    assert reply.text == stopped_at and len(stopped_at) >= first

    # The conversation goes on; a short reply finishes by itself.
    by_id("max-tokens").clear()
    by_id("max-tokens").send_keys("15")
    by_id("message").send_keys("And then?", Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg")) == 4)
    wait.until(lambda d: by_id("send").is_enabled())
    assert by_id("status").text == "ready (the reply reached max tokens)"
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[1].text
    # Everything the page loaded came from the server itself (no CDN).
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(server.url + "/") for u in loaded)


def test_page_drives_a_keyless_server_by_each_local_name(talker_dir, browser):
    """Without an API key the server takes only JSON from its own origin and Host names
    (serve/guard.py): the page, which sends exactly that, still chats, whether opened as
    127.0.0.1 or localhost."""
    s = Server(talker_dir, "--max-tokens", "50")
    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    try:
        port = s.url.rsplit(":", 1)[1]
        for url in (s.url, f"http://localhost:{port}"):
            browser.get(url + "/")
            wait.until(lambda d: by_id("status").text == "ready")
            by_id("max-tokens").clear()
            by_id("max-tokens").send_keys("8")
            by_id("message").send_keys("Hello", Keys.ENTER)
            wait.until(lambda d: by_id("send").is_enabled()
                       and d.find_elements(By.CSS_SELECTOR, ".msg.assistant .text"))
            assert browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[-1].text
            assert by_id("status").text.startswith("ready")
        assert s.health()["finished"] == 2
        assert "Traceback" not in "".join(s.output)
    finally:
        s.close()
