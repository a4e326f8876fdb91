"""A real browser against a real server: Debian's chromium driven by Playwright, on 127.0.0.1."""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
)


@pytest.fixture(scope="module")
def server(run_and_bundle):
    import uvicorn

    from ccad.deploy.web import ServeSettings, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(ServeSettings(run_and_bundle[1])), host="127.0.0.1", port=port, log_level="warning"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if uv.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server_bundle(run_and_bundle):
    return run_and_bundle[1]


def test_upload_shows_result_heatmap_and_model_card(server, server_bundle, browser, synth_folders, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 900})  # phone-sized
    page.goto(server)
    page.wait_for_selector("#model-card table")
    assert "not a diagnosis" in page.inner_text("body").lower()
    image = sorted((synth_folders / "covid").glob("*.png"))[0]
    page.set_input_files("#files", str(image))
    page.focus("#submit")
    page.keyboard.press("Enter")  # by keyboard
    page.wait_for_selector(".result .verdict")
    assert page.inner_text(".result .name") == image.name
    assert page.inner_text(".result .verdict").startswith("Model output: ")
    assert page.get_attribute(".result .heat", "src").startswith("data:image/png;base64,")
    assert page.eval_on_selector(".result .heat", "img => img.naturalWidth") > 0
    assert len(page.query_selector_all(".result .bar")) == 2
    # the reader sees the rule: in words, and as a mark on the positive class's bar at the threshold
    from ccad.models.card import ModelCard

    threshold = ModelCard.load(server_bundle).decision["threshold"]
    rule = page.inner_text(".result .rule")
    assert rule.startswith(f"Decision rule: covid if p(covid) ≥ {threshold * 100:.1f}% (the mark on its bar)")
    marks = page.query_selector_all(".result .bar .threshold")
    assert len(marks) == 1 and marks[0].get_attribute("style") == f"left: {threshold * 100:.1f}%;"
    assert "manifest.csv" not in page.inner_text("#model-card")  # data by name, not by file
    page.uncheck(".result .toggle")
    assert page.eval_on_selector(".result .heat", "img => img.hidden")
    page.check(".result .toggle")
    shot = tmp_path / "ccad-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_a_reader_records_a_verdict_from_the_page(server, browser, synth_folders):
    """Agree / Disagree under a result: the verdict reaches the server's live measures (/metrics)."""
    import urllib.request

    from helpers import samples

    page = browser.new_page()
    page.goto(server)
    page.wait_for_selector("#model-card table")
    page.set_input_files("#files", str(sorted((synth_folders / "normal").glob("*.png"))[0]))
    page.click("#submit")
    page.wait_for_selector(".result .reader:not([hidden])")
    called = page.inner_text(".result .verdict").removeprefix("Model output: ")
    page.click(".result .reader .disagree")
    page.wait_for_selector(".result .reader-status:not(:empty)")  # a selector: the page's CSP forbids eval
    expected = "false positive" if called == "covid" else "false negative"
    assert page.inner_text(".result .reader-status") == f"Recorded ({expected})."
    page.close()
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as answer:
        got = samples(answer.read().decode())
    outcome = expected.replace(" ", "_")
    assert got[("ccad_verdicts_total", (("adapter", "api"), ("outcome", outcome)))] >= 1


def test_a_failed_upload_says_why_in_the_page(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(server)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    page.set_input_files("#files", str(bad))
    page.click("#submit")
    page.wait_for_selector("#error:not(:empty)")  # a selector, not a JS string: the page's CSP forbids eval
    assert "400" in page.inner_text("#error") and "not a readable image" in page.inner_text("#error")
    page.close()


def test_an_out_of_distribution_image_is_shown_as_such(server, browser, tmp_path):
    import numpy as np
    from PIL import Image

    page = browser.new_page()
    page.goto(server)
    flat = tmp_path / "ramp.png"  # an image, but nothing like a chest (a blank one is refused outright)
    Image.fromarray(np.tile(np.linspace(100, 140, 96).astype(np.uint8), (96, 1))).save(flat)
    page.set_input_files("#files", str(flat))
    page.click("#submit")
    page.wait_for_selector(".result .verdict")
    assert page.is_visible(".result .ood")
    shown = page.inner_text(".result .ood")
    assert shown.startswith("Outside what the model is for: not a frontal chest X-ray like those the model was built")
    assert "do not rely on this result" in shown
    first = page.get_attribute(".result .xray", "src")
    page.check(".result .model-view")  # what the model saw is a toggle; the original is shown first
    assert page.get_attribute(".result .xray", "src") != first
    assert "as the model saw it" in page.get_attribute(".result .xray", "alt")
    page.close()
