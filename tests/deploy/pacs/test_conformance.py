"""docs/conformance.md is what ccad.deploy.pacs.conformance generates from the code's own tables, and the
listener negotiates what it says (a real client, dcmtk's echoscu, checks C-ECHO)."""

import subprocess
from pathlib import Path

import pytest
from helpers import free_port
from real_dicom import debian_tool

from ccad.deploy.pacs.conformance import statement
from ccad.io import dicom

DOC = Path(__file__).resolve().parents[3] / "docs" / "conformance.md"


def test_the_conformance_statement_in_docs_is_the_generated_one():
    assert DOC.read_text() == statement(), "regenerate: python -m ccad.deploy.pacs.conformance > docs/conformance.md"


def test_it_lists_every_transfer_syntax_of_the_table_and_the_character_set():
    text = statement()
    for syntax in dicom.SYNTAXES:
        assert f"`{syntax.uid}`" in text
    assert "ISO_IR 192" in text


@pytest.mark.skipif(debian_tool("echoscu") is None, reason="dcmtk is not installed (apt-get install dcmtk)")
def test_the_listener_answers_c_echo_as_the_statement_says(tmp_path):
    from ccad.deploy.pacs.listener import Destination, Listener, ListenerSettings
    from ccad.models.card import DEFAULT_BUNDLE

    port = free_port()
    settings = ListenerSettings(DEFAULT_BUNDLE, Destination("X", "127.0.0.1", free_port()), tmp_path / "s", port=port)
    listener = Listener(settings).start()
    try:
        echo = subprocess.run(
            [debian_tool("echoscu"), "-aec", "CCAD", "127.0.0.1", str(port)], capture_output=True, timeout=60
        )
    finally:
        listener.stop()
    assert echo.returncode == 0, echo.stderr
