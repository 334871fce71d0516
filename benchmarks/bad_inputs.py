"""The bad-input audit: every case of Testing/bad_inputs.py through `fluororeg`, each in its own
process (as a user runs it), for this checkout and optionally an older revision side by side.

    python benchmarks/bad_inputs.py                      # this checkout
    python benchmarks/bad_inputs.py --before b964cac     # and an older commit (a git worktree)

Prints one table of outcomes per command (clean / traceback / silent / message / wrong / crash, see
Testing/bad_inputs.py) and the cases that are not clean. Each process gets a 16 GB address-space
limit and 300 s, so a runaway allocation ends as a crash instead of taking the machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))
import bad_inputs  # noqa: E402

KINDS = ("clean", "traceback", "silent", "message", "wrong", "crash")


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


def run_case(case, source: Path) -> bad_inputs.Outcome:
    """One case in a fresh process importing FluoroRegistrationLib from ``source``."""
    env = dict(os.environ, PYTHONPATH=str(source), FLUOROREG_DEBUG="")
    try:
        done = subprocess.run([sys.executable, "-m", "FluoroRegistrationLib.cli", *case.argv], capture_output=True,
                              text=True, env=env, timeout=300, preexec_fn=_limit, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return bad_inputs.Outcome("crash", -1, "timed out after 300 s")
    return bad_inputs.checked(case, bad_inputs.judge(case, done.returncode, done.stdout, done.stderr))


def audit(cases, source: Path, label: str) -> list:
    outcomes = []
    for case in tqdm(cases, desc=label, unit="case"):
        bad_inputs.cleanup_outputs(cases_root)
        outcomes.append(run_case(case, source))
    return outcomes


def table(cases, runs: dict) -> str:
    """Markdown: per command and version, the count of each outcome."""
    lines = ["| command | version | cases | " + " | ".join(KINDS) + " |", "|---" * (3 + len(KINDS)) + "|"]
    commands = sorted({c.name.split(":")[0] for c in cases})
    for command in commands + ["all"]:
        for label, outcomes in runs.items():
            picked = [o for c, o in zip(cases, outcomes) if command == "all" or c.name.startswith(command + ":")]
            count = collections.Counter(o.kind for o in picked)
            lines.append(f"| {command} | {label} | {len(picked)} | " + " | ".join(str(count[k]) for k in KINDS) + " |")
    return "\n".join(lines)


def worktree(revision: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"fluororeg-{revision}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision], check=True,
                       capture_output=True)
    return path


def main() -> None:
    global cases_root
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="an older revision to audit side by side")
    parser.add_argument("--only-before", action="store_true", help="audit only the --before revision")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fluororeg-bad-inputs"))
    args = parser.parse_args()
    cases_root = Path(args.work)
    cases = bad_inputs.build(cases_root)
    runs = {}
    if args.before:
        runs[args.before] = audit(cases, worktree(args.before), args.before)
    if not args.only_before:
        runs["this"] = audit(cases, ROOT, "this checkout")
    print(table(cases, runs))
    for label, outcomes in runs.items():
        print(f"\nnot clean ({label}):")
        for case, o in zip(cases, outcomes):
            if o.kind != "clean":
                print(f"  {o.kind:9s} {case.name}: rc {o.code}: {o.detail[:160]}")


cases_root = Path(".")
if __name__ == "__main__":
    main()
