"""The try-it page at `/`, in a real headless browser (Debian's chromium), driven over the DevTools protocol:
type a query, press Classify, read the label, probability and top-k the page shows."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
import urllib.request

import pytest
import requests

from serving.server import BackgroundServer, make_config

pytestmark = pytest.mark.browser
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0"]


class Browser:
    """One headless Chromium page, driven with DevTools-protocol commands over a websocket."""

    def __init__(self, executable: str, profile):
        import websocket

        self.process = subprocess.Popen([executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"  # Chromium writes its debugging port here once it listens
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        for _ in range(100):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [t for t in json.load(response) if t["type"] == "page"]
            if pages:
                break
            time.sleep(0.1)
        self.socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], suppress_origin=True, timeout=60)
        self.ids = itertools.count(1)

    def command(self, method: str, **params) -> dict:
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:  # events arrive in between; wait for this command's answer
            message = json.loads(self.socket.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.command("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 60):
        for _ in range(int(seconds * 10)):
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"never true in the page: {expression}")

    def close(self):
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH (`make test` installs Debian's chromium when run as root with apt)")
    page = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    yield page
    page.close()


@pytest.fixture(scope="module")
def server(serving_model_base):
    with BackgroundServer(make_config(serving_model_base, poll_seconds=0)) as running:
        yield running


def test_typing_a_query_shows_the_models_label_probability_and_top_k(browser, server):
    query = "my new card has not arrived yet"
    browser.command("Page.navigate", url=server.url + "/")
    browser.wait_for("document.readyState === 'complete' && document.getElementById('model').options.length > 0")
    browser.evaluate("document.getElementById('model').value = 'fintune-int8';"
                     "document.getElementById('model').dispatchEvent(new Event('change'));"
                     "document.getElementById('task').value = 'intent'; document.getElementById('query').focus()")
    browser.command("Input.insertText", text=query)  # typed as a user types, into the focused field
    browser.evaluate("document.getElementById('submit').click()")
    browser.wait_for("!document.getElementById('result').hidden")
    shown = browser.evaluate("JSON.stringify({label: document.getElementById('label').textContent,"
                             "probability: document.getElementById('probability').textContent,"
                             "top: [...document.querySelectorAll('#topk tr td:first-child')]"
                             ".map(td => td.textContent)})")
    shown = json.loads(shown)
    expected = requests.post(server.url + "/v1/models/fintune-int8:classify",
                             json={"text": query, "task": "intent"}, timeout=60).json()
    assert shown["label"] == expected["label"]
    assert shown["probability"] == f"{expected['probability']:.4f}"
    assert shown["top"] == [row["label"] for row in expected["top_k"]]


def test_the_page_shows_the_servers_error_for_a_bad_query(browser, server):
    browser.command("Page.navigate", url=server.url + "/")
    browser.wait_for("document.readyState === 'complete' && document.getElementById('model').options.length > 0")
    browser.evaluate("document.getElementById('query').value = 'x'.repeat(9000);"
                     "document.getElementById('submit').click()")
    error = browser.wait_for("document.getElementById('error').textContent")
    assert "9000 characters" in error
    assert browser.evaluate("document.getElementById('result').hidden") is True
