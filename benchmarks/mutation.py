"""Mutation testing (mutmut): how many seeded bugs in each module the tests catch.

    python benchmarks/mutation.py                       # every group but adapt; benchmarks/results/mutation.json
    python benchmarks/mutation.py --group monitoring    # one group
    python benchmarks/mutation.py --group monitoring --survivors   # and print each surviving mutant's diff
    python benchmarks/mutation.py --group adapt --sample 100       # 100 of its mutants at random: an estimate

For each group, the group's modules are mutated and the group's tests run against each mutant (mutmut runs,
for a mutant, only the tests that reached its function). The run happens in a scratch copy of the tree
(``src/``, ``tests/``, ``support/``, ``pyproject.toml``) whose ``[tool.mutmut]`` names the group, so the
checkout is never touched. The tests' trained bundle is made once and reused by every mutant
(``CCAD_TEST_BUNDLE_CACHE``): no mutated module trains or exports.

A mutant is *killed* when a test fails (or the run times out, or crashes), *survived* when every test passes,
*no tests* when no test reached it. Mutants listed in ``benchmarks/mutation_equivalent.json`` (name -> why the
change cannot alter behaviour) are left out of the score and reported apart. The score of a module:
killed / (killed + survived + no tests).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.json"

#: group -> (modules mutated, tests run)
GROUPS = {
    "site": (
        ["src/ccad/bundles/calibrate.py", "src/ccad/evaluation/validate.py"],
        ["tests/bundles/test_calibrate.py", "tests/evaluation/test_validate.py"],
    ),
    # `ccad adapt` once a mutant (its tests' module fixture, about 8 s with the cached bundle)
    "adapt": (["src/ccad/bundles/adapt.py", "src/ccad/bundles/adapt_heads.py"], ["tests/bundles/test_adapt.py"]),
    "monitoring": (
        ["src/ccad/evaluation/drift.py", "src/ccad/evaluation/monitor.py", "src/ccad/deploy/live_metrics.py"],
        ["tests/evaluation/test_drift.py", "tests/evaluation/test_monitor.py", "tests/deploy/test_live_metrics.py"],
    ),
    "dicomweb": (
        ["src/ccad/deploy/pacs/dicomweb.py", "src/ccad/deploy/pacs/pull.py", "src/ccad/deploy/pacs/fhir.py"],
        [
            "tests/deploy/pacs/test_dicomweb.py",
            "tests/deploy/pacs/test_dicomweb_trust.py",
            "tests/deploy/pacs/test_hostile_archive.py",
            "tests/deploy/pacs/test_fhir.py",
            "tests/deploy/pacs/test_stow.py",
            "tests/deploy/pacs/test_bounded_get.py",
        ],
    ),
    "results": (
        ["src/ccad/deploy/pacs/results.py"],
        ["tests/deploy/pacs/test_results.py"],
    ),
    "screening": (
        ["src/ccad/screening/screener.py", "src/ccad/screening/results.py", "src/ccad/cli/tables.py"],
        ["tests/screening/test_screener.py", "tests/screening/test_result_files.py"],
    ),
}


#: Tests left out of a group's mutation run, with why: the suite runs them; here they would cost more than the
#: group's other tests together for each mutant, and what they check is also checked by faster tests.
SLOW = {
    "dicomweb": [
        # Orthanc started, a study scored end to end: 5 to 10 s each, a mutant
        "tests/deploy/pacs/test_dicomweb.py::test_pull_scores_a_study_from_the_archive_and_resumes_without_duplicates",
        "tests/deploy/pacs/test_dicomweb.py::test_results_go_back_over_stow_rs_with_the_dimse_paths_content",
        "tests/deploy/pacs/test_dicomweb.py::test_fhir_reports_are_put_with_retries",
    ],
}


def scratch_tree(group: str, work: Path) -> Path:
    """A copy of the tree whose ``pyproject.toml`` configures mutmut for ``group``."""
    tree = work / group
    shutil.rmtree(tree, ignore_errors=True)  # a fresh copy, and a fresh run: mutmut keeps results in mutants/
    for name in ("src", "tests", "support"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if (ROOT.parent / "shared").is_dir():  # the tests find ../shared beside their checkout: mutants/, in tree
        (tree / "shared").symlink_to(ROOT.parent / "shared")
    write_config(group, tree)
    return tree


def write_config(group: str, tree: Path) -> None:
    """``tree``'s pyproject.toml: the project's, and a ``[tool.mutmut]`` naming the group's modules and tests."""
    modules, tests = GROUPS[group]
    config = "\n".join(
        [
            "[tool.mutmut]",
            'source_paths = ["src"]',
            f"only_mutate = {json.dumps(modules)}",
            'also_copy = ["support"]',
            f"pytest_add_cli_args_test_selection = {json.dumps([t for t in tests if (ROOT / t).exists()])}",
            # --assert=plain: a failing assert raises at once, without pytest's diff of what it compared (the
            # verdict is the same; a killed mutant costs less)
            f"pytest_add_cli_args = {json.dumps(['-p', 'no:cacheprovider', '-q', '--assert=plain', *_deselect(group)])}",  # noqa: E501
            # mutmut's CPU limit a mutant is (estimate + constant) x 30 s; the estimate leaves out a module
            # fixture's time, so a group whose tests share one (adapt) needs a larger constant, or a mutant that
            # only runs its tests to the end is stopped and counted as a timeout, a kill
            f"timeout_constant = {TIMEOUT_CONSTANT.get(group, 1.0)}",
        ]
    )
    text = (ROOT / "pyproject.toml").read_text()
    (tree / "pyproject.toml").write_text(text + "\n" + config + "\n")


#: mutmut's timeout_constant by group (default 1): adapt's tests take ~22 s of CPU a mutant, ORT's threads
#: included, against a limit of 30 s with the default.
TIMEOUT_CONSTANT = {"adapt": 30.0}


#: Groups whose tests share a module-scoped fixture that runs the mutated code (adapt's ``adapted``: one
#: ``ccad adapt`` for the module). mutmut maps a function to the tests during which it ran, so only the first
#: test using the fixture would be run against its mutants; here each function gets every test of the files
#: that reach it.
WHOLE_FILES = {"adapt"}


def widen_to_files(tree: Path) -> None:
    """Map each function in mutmut's stats to every test of each test file that reaches it."""
    path = tree / "mutants" / "mutmut-stats.json"
    stats = json.loads(path.read_text())
    by_file: dict[str, set[str]] = {}
    for test in stats["duration_by_test"]:
        by_file.setdefault(test.split("::")[0], set()).add(test)
    for function, tests in stats["tests_by_mangled_function_name"].items():
        files = {t.split("::")[0] for t in tests}
        stats["tests_by_mangled_function_name"][function] = sorted(set(tests).union(*(by_file[f] for f in files)))
    path.write_text(json.dumps(stats))


def _deselect(group: str) -> list[str]:
    return [arg for test in SLOW.get(group, []) for arg in ("--deselect", test)]


def _env(work: Path) -> dict[str, str]:
    """mutmut's environment: the installed ccad off the path (the scratch tree's is used), the bundle cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CCAD_TEST_BUNDLE_CACHE"] = str(work / "bundle-cache")
    return env


def _prepare(group: str, tree: Path, env: dict[str, str], log) -> None:
    """The mutants and mutmut's stats made without running a mutant (mutmut then refuses a name that matches
    none of them), the stats widened for a group in :data:`WHOLE_FILES`."""
    subprocess.run([sys.executable, "-m", "mutmut", "run", "none-of-them"], cwd=tree, env=env, stdout=log,
                   stderr=subprocess.STDOUT)  # fmt: skip
    if group in WHOLE_FILES:
        widen_to_files(tree)


def run_group(group: str, work: Path, children: int, sample: int | None = None) -> dict:
    """Every mutant of the group's modules, or (``sample``) a random ``sample`` of them (seed 0): for a group
    whose tests are too slow to run once a mutant for all of them, an estimate of its score."""
    tree = scratch_tree(group, work)
    env = _env(work)
    started = time.monotonic()
    names: list[str] = []
    with open(work / f"{group}.log", "w") as log:  # mutmut's progress, for `tail -f`
        if sample or group in WHOLE_FILES:
            _prepare(group, tree, env, log)
            everything = sorted(_names(tree, GROUPS[group][0]))
            names = random.Random(0).sample(everything, sample) if sample else []
        done = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise SystemExit(f"mutmut failed on {group}: see {work / (group + '.log')}")
    result = {"seconds": round(time.monotonic() - started), **tally(tree, GROUPS[group][0], set(names) or None)}
    if sample:
        result["sample"] = f"{sample} of {len(everything)} mutants drawn at random (seed 0)"
        result["sampled"] = sorted(names)
    return result


def _names(tree: Path, modules: list[str]) -> list[str]:
    return [n for m in modules for n in json.loads((tree / "mutants" / (m + ".meta")).read_text())["exit_code_by_key"]]


def rerun_survivors(group: str, work: Path, children: int, only: set[str] | None = None) -> dict:
    """The tests as they are now against the mutants that survived the last run in ``work`` (after new tests);
    ``only``: of these mutants (a sample's)."""
    tree = work / group
    for name in ("tests", "support"):
        shutil.rmtree(tree / name)
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    write_config(group, tree)
    (tree / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # which tests reach which function: again
    names = [n for m in tally(tree, GROUPS[group][0], only)["modules"].values() for n in m["survivors"]]
    env = _env(work)
    with open(work / f"{group}.log", "a") as log:
        if group in WHOLE_FILES:  # the stats again, widened
            _prepare(group, tree, env, log)
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names],
            cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip
    return tally(tree, GROUPS[group][0], only)


def tally(tree: Path, modules: list[str], only: set[str] | None = None) -> dict:
    from mutmut.stats import status_by_exit_code

    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    out: dict = {"modules": {}}
    for module in modules:
        meta = json.loads((tree / "mutants" / (module + ".meta")).read_text())
        counts = {"killed": 0, "survived": 0, "no tests": 0, "timeout": 0, "equivalent": 0, "other": 0}
        survivors = []
        for name, code in sorted(meta["exit_code_by_key"].items()):
            if only is not None and name not in only:
                continue
            status = status_by_exit_code[code]
            if name in equivalent:
                counts["equivalent"] += 1
            elif status in ("killed", "timeout", "segfault"):
                counts["killed" if status == "killed" else "timeout"] += 1
            elif status in ("survived", "no tests"):
                counts[status] += 1
                survivors.append(name)
            else:
                counts["other"] += 1
                survivors.append(name)
        caught = counts["killed"] + counts["timeout"]
        scored = caught + counts["survived"] + counts["no tests"] + counts["other"]
        out["modules"][module] = {
            **counts,
            "score": round(caught / scored, 3) if scored else None,
            "survivors": survivors,
        }
    return out


def show(tree: Path, names: list[str]) -> None:
    for name in names:
        print(subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=tree, capture_output=True,
                             text=True).stdout)  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", action="append", choices=sorted(GROUPS), help="default: every group but adapt")
    p.add_argument("--children", type=int, default=os.cpu_count() or 2)
    p.add_argument("--survivors", action="store_true", help="print each surviving mutant's diff")
    p.add_argument("--work", help="scratch folder, kept (default: a temporary one, removed); mutmut's log in it")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mutation.json"))
    p.add_argument("--tally", action="store_true", help="count the results already in --work again (no run)")
    p.add_argument("--survivors-again", action="store_true", help="run the last run's survivors in --work again")
    p.add_argument("--sample", type=int, help="run this many of each group's mutants, drawn at random (seed 0)")
    args = p.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ccad-mutation-"))
    groups = args.group or [g for g in GROUPS if g != "adapt"]  # adapt whole: hours; name it (with --sample)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("groups", {})
    try:
        for group in groups:
            if args.survivors_again:
                result = json.loads(out.read_text())["groups"][group] if out.exists() else {}
                sampled = set(result.get("sampled", [])) or None
                result.update(rerun_survivors(group, work, args.children, sampled))
            elif args.tally:
                result = json.loads(out.read_text())["groups"][group] if out.exists() else {}
                result.update(tally(work / group, GROUPS[group][0], set(result.get("sampled", [])) or None))
            else:
                result = run_group(group, work, args.children, args.sample)
            report["groups"][group] = {"tests": GROUPS[group][1], "left_out": SLOW.get(group, []), **result}
            for module, r in result["modules"].items():
                print(f"{module}: {r['score']} ({r['killed']} killed, {r['timeout']} timed out, {r['survived']} "
                      f"survived, {r['no tests']} no tests, {r['equivalent']} equivalent)")  # fmt: skip
                if args.survivors:
                    show(work / group, r["survivors"])
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    import mutmut

    report.update(tool=f"mutmut {mutmut.__version__}", date=time.strftime("%Y-%m-%d"), machine=_machine())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def _machine() -> str:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return f"{os.cpu_count()} cores, {cpu.group(1) if cpu else 'unknown CPU'}"


if __name__ == "__main__":
    main()
