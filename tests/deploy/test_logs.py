"""The log handler ``configure_logging`` installs: patient data withheld, and always the current stderr."""

import io
import logging
import sys

import pytest

from ccad.deploy.logs import configure_logging


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    yield
    logging.captureWarnings(False)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_the_handler_follows_stderr_and_withholds_third_party_messages(root_logging, monkeypatch):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging()
    logging.getLogger("ccad.test").info("screened image %s", "a1b2")
    first.close()  # what pytest does to a test's captured stream when the test ends
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("pydicom").warning("Invalid value for VR DA: '19600101'")
    logging.getLogger("ccad.test").warning("line\nforged")
    text = second.getvalue()
    assert "Logging error" not in text and "19600101" not in text
    assert "a warning message of pydicom was withheld" in text
    assert "line\\x0aforged" in text and "screened image" not in text


def test_an_explicit_stream_is_kept(root_logging):
    stream = io.StringIO()
    configure_logging(stream=stream)
    logging.getLogger("ccad.test").warning("kept")
    assert "ccad.test WARNING kept" in stream.getvalue()
