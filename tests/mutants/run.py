"""The mutation suite: each `tests/mutants/*.patch` breaks one real guard of the product; the
tests its `Killed-by:` lines name must turn red. One command, from the repository root:

    python tests/mutants/run.py            # every mutant
    python tests/mutants/run.py NAME...    # some of them (file names without `.patch`)

The working tree is never touched (other people edit it while this runs): the tracked and
untracked-but-not-ignored files are copied as they are now into a temporary directory, and
every mutant is applied there (`patch -p1`), its tests run (`pytest -n 0 -x`, this Python,
`PYTHONPATH` = the copy, no bytecode written so a same-size mutant is never served from a
stale `.pyc`), and the file restored. The selected tests first run once on the unmutated
copy: a test that fails there would "kill" every mutant and prove nothing.

A mutant is killed when pytest exits 1 (a test failed); any other exit (collection error,
no test selected, interrupted) or a patch that does not apply is an error, not a kill.
Prints `mutants: N killed, 0 survived` and exits 0 only when every mutant was killed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass(frozen=True)
class Mutant:
    """One patch and what its header says: what it breaks, which tests must catch it."""

    name: str
    patch: Path
    breaks: str
    tests: list[str]
    files: list[str]

    @classmethod
    def load(cls, path: Path) -> Mutant:
        text = path.read_text()
        head = text.split("\n--- ", 1)[0]
        tests = [t for line in re.findall(r"^Killed-by:(.*)$", head, re.M) for t in line.split()]
        breaks = " ".join(re.findall(r"^Breaks:\s*(.*)$", head, re.M))
        files = re.findall(r"^\+\+\+ b/(\S+)", text, re.M)
        if not tests or not files:
            raise SystemExit(f"{path.name}: needs `Killed-by:` lines and a unified diff")
        return cls(path.stem, path, breaks, tests, files)


def copy_tree(dest: Path) -> None:
    """The working tree as it is now: tracked files plus untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = raw.decode()
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree, or a submodule
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def run_tests(copy: Path, tests: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    start = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-n",
                "0",
                "-x",
                "-q",
                "-p",
                "no:cacheprovider",
                *tests,
            ],
            cwd=copy,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    return rc, time.monotonic() - start


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def tail(log: Path, n: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = parser.parse_args()

    mutants = [Mutant.load(p) for p in sorted(HERE.glob("*.patch"))]
    if args.names:
        unknown = set(args.names) - {m.name for m in mutants}
        if unknown:
            raise SystemExit(f"unknown mutants: {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.name in args.names]

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="broker-mutants-"))
    copy = tmp / "repo"
    copy_tree(copy)
    # No BROKER_* setting of this shell, but where the test servers are (BROKER_TEST_*).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BROKER_") or k.startswith("BROKER_TEST_")
    }
    env.update(PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    # The market data set lives beside the real checkout, not beside the copy.
    env.setdefault("BROKER_TEST_DATA_DIR", str(REPO.parent / "shared" / "data"))
    # The copy's code must be what the tests import (the editable install points at the
    # checkout; PYTHONPATH goes first), here and in the worker processes tests start.
    where = subprocess.run(
        [sys.executable, "-c", "import broker; print(broker.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(copy)):
        say(f"mutants: the tests would import broker from {where or '?'}, not from the copy")
        shutil.rmtree(tmp, ignore_errors=True)
        return 2
    errors: list[str] = []
    killed: list[str] = []
    survived: list[str] = []
    try:
        if not args.no_baseline:
            selected = list(dict.fromkeys(t for m in mutants for t in m.tests))
            rc, took = run_tests(copy, selected, env, tmp / "baseline.log")
            say(f"baseline: {len(selected)} selections, exit {rc}, {took:.0f}s")
            if rc != 0:
                say(tail(tmp / "baseline.log", 40))
                say("mutants: the selected tests fail without any mutant; fix them first")
                return 2
        for m in mutants:
            missing = [f for f in m.files if not (copy / f).is_file()]
            if missing:
                errors.append(m.name)
                say(f"ERROR    {m.name}: no {', '.join(missing)} (moved? regenerate the patch)")
                continue
            pristine = {f: (copy / f).read_bytes() for f in m.files}
            applied = subprocess.run(
                [
                    "patch",
                    "-p1",
                    "--batch",
                    "--forward",
                    "--no-backup-if-mismatch",
                    "-r",
                    "-",
                    "-i",
                    str(m.patch),
                ],
                cwd=copy,
                capture_output=True,
                text=True,
            )
            try:
                if applied.returncode != 0:
                    errors.append(m.name)
                    say(f"ERROR    {m.name}: the patch does not apply\n{applied.stdout}")
                    continue
                log = tmp / f"{m.name}.log"
                rc, took = run_tests(copy, m.tests, env, log)
            finally:
                for f, data in pristine.items():
                    (copy / f).write_bytes(data)
            if rc == 1:
                killed.append(m.name)
                say(f"killed   {m.name} ({took:.0f}s): {m.breaks}")
            elif rc == 0:
                survived.append(m.name)
                say(f"SURVIVED {m.name} ({took:.0f}s): {m.breaks}\n  tests: {' '.join(m.tests)}")
            else:
                errors.append(m.name)
                say(f"ERROR    {m.name}: pytest exit {rc}\n{tail(log)}")
    finally:
        if args.keep:
            say(f"copy kept in {copy}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.monotonic() - started
    line = f"mutants: {len(killed)} killed, {len(survived)} survived"
    if errors:
        line += f", {len(errors)} errors ({', '.join(errors)})"
    say(f"{line} in {total:.0f}s")
    return 0 if not survived and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
