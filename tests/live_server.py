"""A real ``ccad serve`` process on a free port of 127.0.0.1, for the tests that need one (the web tests share it)."""

import contextlib
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import free_port


@contextlib.contextmanager
def serving(bundle, *flags: str):
    """``ccad serve --model BUNDLE --port FREE FLAGS...`` started and answering ``/healthz``: (port, process);
    stopped on exit. A server that does not start fails the test with the end of its stderr."""
    port = free_port()
    command = [sys.executable, "-m", "ccad", "serve", "--model", str(bundle), "--port", str(port), *flags]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.25)
        else:
            proc.kill()
        if proc.poll() is not None:
            pytest.fail("ccad serve did not start: " + proc.stderr.read().decode()[-2000:])
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)
