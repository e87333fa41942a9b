"""``fibervl demo`` in a real headless browser: Debian's chromium and chromium-driver, driven by
selenium. The command serves the tiny run of conftest.py in a subprocess; the browser uploads an
image, types class names, presses Detect, and the boxes come back as text and drawn on the image.

Without chromium, chromedriver, selenium or gradio the test is skipped, with the reason, except
in CI (``CI=true``), where it fails: .ci/run installs them (apt-get install chromium
chromium-driver; pip install -e ".[dev,demo,...]").
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageColor

from fibervl.predict.draw import COLOURS

SERVER_START_S = 45  # importing torch and gradio and loading two tiny models, on a busy 2-core host
PAGE_WAIT_S = 20


def _missing(what: str) -> None:
    """Fail in CI, where everything is installed; skip elsewhere, saying what to install."""
    message = f"the browser test needs {what}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (.ci/run installs it)")
    pytest.skip(message)


def _chrome_paths() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        _missing("chromium and chromedriver: apt-get install -y chromium chromium-driver")
    return browser, driver


@pytest.fixture
def browser():
    binary, driver_path = _chrome_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        _missing("selenium: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # --no-sandbox: CI runs as root; --no-proxy-server: the page is on 127.0.0.1
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-proxy-server",
                "--window-size=1100,760"):
        options.add_argument(arg)
    # The driver's path is given, so selenium's own driver manager never goes to the network.
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(PAGE_WAIT_S)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url, timeout=10) as response:
        return response.read()


@pytest.fixture
def demo_server(run_dir, tmp_path):
    """``fibervl demo`` on a free port of 127.0.0.1 in a subprocess: (url, log file); stopped after."""
    if importlib.util.find_spec("gradio") is None:
        _missing("gradio: pip install -e '.[demo]'")
    port, log_path = _free_port(), tmp_path / "demo.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "NO_PROXY": "127.0.0.1,localhost"}
    command = [sys.executable, "-m", "fibervl.cli", "demo", "--model", str(run_dir), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"fibervl demo exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                _get(url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"fibervl demo did not answer on {url} in {SERVER_START_S} s:\n{log_path.read_text()}")
                time.sleep(0.5)
        yield url, log_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def detect_in_browser(driver, url: str, image: Path, classes: str, wait_s: float = PAGE_WAIT_S) -> tuple[str, str]:
    """Open the page, upload ``image``, type ``classes`` and press Detect: (the answer text,
    the src of the result image)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, wait_s)
    driver.get(url)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]"))).send_keys(str(image))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image img")))  # the upload is shown
    driver.find_element(By.CSS_SELECTOR, "#detect-text textarea, #detect-text input").send_keys(classes)
    driver.find_element(By.ID, "detect-run").click()

    def answered(d):
        text = d.find_element(By.CSS_SELECTOR, "#result-text textarea").get_attribute("value")
        images = d.find_elements(By.CSS_SELECTOR, "#result-image img")
        src = images[0].get_attribute("src") if images else ""
        return (text, src) if text and src else False

    return wait.until(answered)


def test_detection_in_a_browser(browser, demo_server, shapes_png, tmp_path):
    url, log_path = demo_server
    try:
        text, src = detect_in_browser(browser, url, shapes_png, "square, circle")
    except Exception:
        browser.save_screenshot(str(tmp_path / "failed.png"))
        print(f"screenshot: {tmp_path / 'failed.png'}\nserver log:\n{log_path.read_text()}")
        raise
    # The answer: "N boxes", then "class score at [x0, y0, x1, y1]" per box, at most 10 (the default).
    head, *lines = text.splitlines()
    assert head == f"{len(lines)} boxes" and 1 <= len(lines) <= 10, text
    boxes = []
    for line in lines:
        m = re.fullmatch(r"(square|circle) (\d\.\d\d) at \[(\d+), (\d+), (\d+), (\d+)\]", line)
        assert m, line
        boxes.append([int(v) for v in m.groups()[2:]])
    # The picture is the uploaded image with the boxes drawn: the last box drawn lies on top of the
    # others, so its left edge shows its colour.
    picture = Image.open(io.BytesIO(_get(src))).convert("RGB")
    original = Image.open(shapes_png).convert("RGB")
    assert picture.size == original.size
    assert picture.tobytes() != original.tobytes(), "the result is the uploaded image: no box drawn"
    x0, y0, _, y1 = boxes[-1]
    colour = ImageColor.getrgb(COLOURS[(len(boxes) - 1) % len(COLOURS)])
    around = {picture.getpixel((x, y)) for x in range(max(0, x0 - 2), min(picture.width, x0 + 3))
              for y in range(y0, min(picture.height, y1 + 1))}
    assert colour in around, (boxes[-1], colour)
