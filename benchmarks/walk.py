"""The walk of one image through the package: which ccad modules a ``ccad predict x.png`` (and a
``POST /api/v1/predict``) visits, in what order, and whether it ever climbs back up a layer or returns to a
module it has left other than through the adapter.

A profile hook (``sys.setprofile`` and ``threading.setprofile``: every thread) records each call that crosses
from one ccad module into another; the caller is the nearest ccad frame on the stack, and a call whose stack
holds no ccad frame (a pool thread starting a task) is counted as a thread hand-off. Module-level code
(imports) is left out. For each walk it reports:

- ``modules``: the ccad modules entered; ``moves``: the calls that cross between two of them;
- ``climbs``: calls from a lower layer into a higher one (a callback up the layers); the aim is none;
- ``returns``: calls back into a module that is still below on the same thread's call stack (A -> B -> A:
  a module the walk went down from, entered again from below), other than the adapter (the CLI, the web
  package); the aim is none;
- ``handoffs``: thread hand-offs.

Layers are pyproject.toml's import-linter layers. The model is the bundle shipped with ccad (or ``--model``);
model loading is part of both walks, as in ``ccad predict`` and a server's start.

    python benchmarks/walk.py [--model BUNDLE] [--out benchmarks/results/walk.json]
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import tomllib
from pathlib import Path

from _report import emit

ROOT = Path(__file__).resolve().parents[1]


def layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [[m.strip() for m in row.split("|")] for row in config["layers"]]


def layer_of(module: str, table: list[list[str]]) -> int:
    """0 = the top layer; the deeper, the larger."""
    for i, row in enumerate(table):
        if any(module == m or module.startswith(m + ".") for m in row):
            return i
    return len(table)


class Walk:
    def __init__(self, adapters: tuple[str, ...]):
        self.adapters, self.table = adapters, layers()
        self.calls: list[tuple[str, str]] = []
        self.reentries: list[str] = []
        self.handoffs = 0
        self._stacks = threading.local()
        self._lock = threading.Lock()

    def hook(self, frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("ccad") or frame.f_code.co_name == "<module>":
            return
        stack = getattr(self._stacks, "frames", None)
        if stack is None:
            stack = self._stacks.frames = []
        if event == "return":
            if stack and stack[-1][0] is frame:
                stack.pop()
            return
        if event != "call":
            return
        with self._lock:
            if not stack:
                self.handoffs += 1
                self.calls.append(("(thread)", module))
            elif stack[-1][1] != module:
                caller = stack[-1][1]
                self.calls.append((caller, module))
                below = {m for _, m in stack[:-1]}
                if module in below and not module.startswith(self.adapters):
                    self.reentries.append(f"{' -> '.join(_chain(stack))} -> {module}")
        stack.append((frame, module))

    def __enter__(self):
        threading.setprofile(self.hook)
        sys.setprofile(self.hook)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)

    def report(self) -> dict:
        entered, climbs = [], []
        for caller, callee in self.calls:
            if caller != "(thread)" and layer_of(callee, self.table) < layer_of(caller, self.table):
                climbs.append(f"{caller} -> {callee}")
            if callee not in entered:
                entered.append(callee)
        return {
            "modules": len(entered),
            "moves": sum(1 for caller, _ in self.calls if caller != "(thread)"),
            "climbs": sorted(set(climbs)),
            "returns": sorted(set(self.reentries)),
            "handoffs": self.handoffs,
            "order": entered,
        }


def _chain(stack) -> list[str]:
    """The modules of a call stack, each once in a row."""
    out: list[str] = []
    for _, module in stack:
        if not out or out[-1] != module:
            out.append(module)
    return out


def cli_walk(model: str, image: Path) -> dict:
    from ccad.cli import main

    out, err = io.StringIO(), io.StringIO()
    with Walk(("ccad.cli",)) as walk:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            code = main(["predict", "--model", model, str(image)])
        finally:
            sys.stdout, sys.stderr = stdout, stderr
    assert code == 0, err.getvalue()
    return walk.report()


def web_walk(model: str, image: Path) -> dict:
    from fastapi.testclient import TestClient

    from ccad.deploy.web import ServeSettings, create_app

    with Walk(("ccad.deploy.web",)) as walk:  # threads started inside are hooked: the app is made inside too
        with TestClient(create_app(ServeSettings(Path(model)))) as client:
            answer = client.post("/api/v1/predict", files=[("files", ("x.png", image.read_bytes(), "image/png"))])
    assert answer.status_code == 200, answer.text
    return walk.report()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a bundle (default: the one shipped with ccad)")
    parser.add_argument("--out")
    args = parser.parse_args()
    from ccad.data.synthetic import render_patient
    from ccad.models.card import default_bundle

    model = args.model or str(default_bundle())
    import tempfile

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "x.png"
        Image.fromarray((render_patient(np.random.default_rng(0), "normal", 256) * 255).astype(np.uint8)).save(image)
        report = {"benchmark": "walk", "model": Path(model).name, "cli": cli_walk(model, image)}
        report["web"] = web_walk(model, image)
    emit(report, args.out)


if __name__ == "__main__":
    main()
