"""The package's layers hold: import-linter's contracts pass and no import, function-level ones included,
closes a cycle between ccad's modules."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_graph():
    grimp = pytest.importorskip("grimp", reason="import-linter (the dev extra) is not installed")
    graph = grimp.build_graph("ccad")
    modules = sorted(m for m in graph.modules if m.startswith("ccad"))
    return {
        m: {d for d in graph.find_modules_directly_imported_by(m) if d.startswith("ccad") and d != m} for m in modules
    }


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other in a ring (size > 1)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_ring():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_ccad_modules():
    edges = _import_graph()
    assert len(edges) > 40  # the whole package was seen
    assert strongly_connected(edges) == []


def test_layer_contracts_pass():
    lint = shutil.which("lint-imports") or pytest.skip("lint-imports (import-linter, the dev extra) is not installed")
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_lower_layer_importing_a_higher_one_is_caught(tmp_path):
    """The contract is real: a copy of the package where io imports scoring fails lint-imports."""
    lint = shutil.which("lint-imports") or pytest.skip("lint-imports (import-linter, the dev extra) is not installed")
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "ccad", copy / "ccad", ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    with open(copy / "ccad" / "io" / "files.py", "a") as f:
        f.write("\n\ndef _bad():\n    from ccad.scoring.predictor import load_predictor  # noqa: F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = subprocess.run(
        [lint],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)},
    )
    assert done.returncode != 0
    assert "ccad.io.files -> ccad.scoring.predictor" in done.stdout


def test_the_walk_of_one_image_never_climbs_back_up_or_reenters_a_module(tmp_path):
    """``ccad predict x.png`` traced call by call (benchmarks/walk.py): no call from a lower layer into a higher
    one, and no module entered again from below while it is still on the stack (the old predictor -> score ->
    predictor back-call was one)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import walk

    from ccad.data.synthetic import render_patient
    from ccad.models.card import default_bundle

    image = tmp_path / "x.png"
    Image.fromarray((render_patient(np.random.default_rng(0), "normal", 128) * 255).astype(np.uint8)).save(image)
    report = walk.cli_walk(str(default_bundle()), image)
    assert "ccad.screening.screener" in report["order"] and report["moves"] > 20
    assert report["climbs"] == [] and report["returns"] == []


def test_a_dicom_is_parsed_once_a_side_of_the_spool_and_each_limit_checked_once(tmp_path):
    """A DICOM upload and a C-STORE traced call by call (benchmarks/walk.py): the upload's data set is parsed once
    (its header read for the limits is the one the service decodes); the C-STORE's once by the SCP and once by
    the worker, which reads it back from the spool (the hand-off is bytes on disk), and the study's copied
    attributes (no pixel) once when the study is answered; every intake limit checked once; no climb, no
    re-entry."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import walk

    from ccad.data.synthetic import render_patient
    from ccad.models.card import default_bundle

    gray = render_patient(np.random.default_rng(0), "normal", 128)
    upload = walk.web_walk(str(default_bundle()), walk.chest_cr(tmp_path / "x.dcm", gray), "application/dicom")
    cstore = walk.cstore_walk(str(default_bundle()), gray, tmp_path / "spool")
    for report in (upload, cstore):
        assert report["climbs"] == [] and report["returns"] == []
        checks = report["limit_checks"]
        assert {"ccad.io.dicomfile.check_data_set", "ccad.io.dicomfile.check_frame_size"} <= set(checks)
        assert {name: count["calls"] for name, count in checks.items()} == {name: 1 for name in checks}
    assert upload["parses"]["calls"] == 1
    received = {caller: n for caller, n in cstore["parses"]["callers"].items() if ".delivery." not in caller}
    assert sorted(received.values()) == [1, 1, 1]
    assert {next(side for side in (".scp.", ".worker.", ".studies.") if side in c) for c in received} == {
        ".scp.",
        ".worker.",
        ".studies.",
    }


def test_every_test_file_has_its_own_name():
    """The test folders have no ``__init__.py`` (pytest's rootdir imports): two test files of one name in two
    folders make the second fail to import, in whichever run collects both."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_no_module_is_over_400_lines_and_no_class_over_250():
    import ast

    big = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in (ROOT / "src" / "ccad").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    ]
    for path in (ROOT / "src" / "ccad").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                big.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert big == []


def _functions(root: Path):
    import ast

    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        owner = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                owner.update({id(child): node.name for child in node.body})
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, owner.get(id(node)), node


def test_no_function_is_over_60_lines():
    long = [
        f"{path.relative_to(ROOT)}:{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for folder in (ROOT / "src" / "ccad", ROOT / "benchmarks", ROOT / "support", ROOT / "tests")
        for path, _, f in _functions(folder)
        if f.end_lineno - f.lineno + 1 > 60
    ]
    assert long == []


#: Calls a constructor must not make: files, sessions, threads, subprocesses (``load`` classmethods do them).
DOING = {
    "open",
    "read_text",
    "read_bytes",
    "write_text",
    "write_bytes",
    "mkdir",
    "Thread",
    "start",
    "load",
    "InferenceSession",
    "cpu_session",
    "Popen",
    "run",
    "iterdir",
    "glob",
    "unlink",
    "check",
}
#: Ray makes an actor by calling its class: the actor's constructor is where it loads the model, once.
RAY_ACTORS = {"Scorer"}


def test_constructors_only_store():
    import ast

    doing = []
    for path, cls, f in _functions(ROOT / "src" / "ccad"):
        if f.name != "__init__" or cls in RAY_ACTORS:
            continue
        for call in (n for n in ast.walk(f) if isinstance(n, ast.Call)):
            name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            if name in DOING:
                doing.append(f"{path.relative_to(ROOT)}:{cls}.__init__ calls {name}")
    assert doing == []
