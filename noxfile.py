"""Sessions for tests, coverage, linting, type checking, docs and benchmarks.

``nox`` runs the default sessions: the test matrix (3 Pythons x 2 backend sets), ``coverage``,
lint, typing, docs and a short soak (``soak_short``, 5,000 requests per backend). ``nox -s soak``
(100,000 requests per backend) and ``nox -s bench`` (the benchmarks) are never part of the default
run.

Tests run in parallel (pytest-xdist, one worker per core, at most four) under coverage. Each test
session also runs asyncio in one of its modes (``CORRAL_ASYNCIO_MODE``, see tests/conftest.py),
so that the matrix covers them without extra sessions:

- the asyncio-only session on 3.11 runs asyncio in debug mode;
- the asyncio-only sessions on 3.12 and 3.13 run asyncio with the eager task factory;
- the asyncio+trio sessions run asyncio as it runs in production.

``coverage`` combines the branch coverage of every test session that ran (subprocesses
included, such as ``python -m corral`` in the CLI tests) and fails below the floor in
``[tool.coverage.report]``. Run it after the test sessions (``nox`` does): on its own it only
reports what earlier test sessions left behind.

Every Python in ``PYTHONS`` must be found: a missing one fails its sessions instead of skipping
them (``nox --no-error-on-missing-interpreters`` skips them). pyenv's versions are found even
when they are not active, and the end of the run names what was missing.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import re
import shutil
import subprocess
import sys

import nox

nox.needs_version = ">=2025.2.9"
# Plain venv + pip: it needs nothing but Python on a fresh machine, and pip honours the
# machine's own pip configuration (indexes, constraints, certificates).
nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
# A run that silently skips two of three Pythons and exits 0 proves much less than it claims.
nox.options.error_on_missing_interpreters = True

ROOT = pathlib.Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHONS = ["3.11", "3.12", "3.13"]


def _runs(command: str) -> bool:
    """Return whether *command* is on PATH and starts (pyenv's shims are found but may not)."""
    if shutil.which(command) is None:
        return False
    try:
        result = subprocess.run([command, "-c", ""], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _find_pythons() -> list[str]:
    """Put pyenv's inactive versions of PYTHONS on PATH; return the versions still missing.

    pyenv's shims answer to ``python3.12`` even when 3.12 is not active, and then fail, so nox
    would skip it; the interpreter itself lives in ``$PYENV_ROOT/versions/3.12.N/bin``.
    """
    pyenv_versions = (
        pathlib.Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser() / "versions"
    )
    missing = []
    for minor in PYTHONS:
        command = f"python{minor}"
        if _runs(command):
            continue
        pattern = re.compile(rf"{re.escape(minor)}\.(\d+)")
        found = sorted(
            (int(match.group(1)), path)
            for path in (pyenv_versions.iterdir() if pyenv_versions.is_dir() else ())
            if (match := pattern.fullmatch(path.name)) and (path / "bin" / command).is_file()
        )
        if found:
            bin_dir = found[-1][1] / "bin"
            os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        if not _runs(command):
            missing.append(minor)
    return missing


MISSING_PYTHONS = _find_pythons()


@atexit.register
def _report_missing_pythons() -> None:
    # After nox's own summary, so that the last lines say what the run did not test.
    if MISSING_PYTHONS:
        print(
            f"nox: no Python {', '.join(MISSING_PYTHONS)} found, so the sessions on"
            f" {'it' if len(MISSING_PYTHONS) == 1 else 'them'} cannot run. Install"
            f" {'it' if len(MISSING_PYTHONS) == 1 else 'them'} (with pyenv:"
            f" `pyenv install {' '.join(MISSING_PYTHONS)}`) or put python3.N on PATH;"
            " see the README's 'Running the tests'.",
            file=sys.stderr,
        )


# Backend set -> (extras installed, backends the test suite runs; see tests/conftest.py).
# The asyncio set installs no trio at all, so it also proves corral works without it.
BACKEND_SETS = {
    "asyncio": (".[cli,server]", "asyncio"),
    "asyncio+trio": (".[trio,cli,server]", "asyncio,trio"),
}


# (Python, backend set) -> CORRAL_ASYNCIO_MODE; unlisted sessions run asyncio's default mode.
# The eager task factory exists from 3.12 on.
ASYNCIO_MODES = {
    ("3.11", "asyncio"): "debug",
    ("3.12", "asyncio"): "eager",
    ("3.13", "asyncio"): "eager",
}

# pytest-xdist workers: one per core, at most four (more mostly adds start-up and contention).
XDIST = ["-n", "auto", "--maxprocesses", "4"]


def _groups(*names: str) -> tuple[str, ...]:
    return nox.project.dependency_groups(PYPROJECT, *names)


def _coverage_env(session: nox.Session) -> dict[str, str]:
    """Return the environment that makes a session's coverage data land in the project root.

    The data files are named after the session, and the session's old ones are removed first,
    so that ``coverage combine`` never counts a previous run's lines.
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "-", session.name).strip("-")
    data_file = ROOT / f".coverage.{slug}"
    for old in ROOT.glob(f"{data_file.name}*"):
        old.unlink()
    # An absolute path: the CLI tests start `python -m corral` with another working directory.
    return {"COVERAGE_FILE": str(data_file)}


@nox.session(python=PYTHONS)
@nox.parametrize("backends", list(BACKEND_SETS))
def tests(session: nox.Session, backends: str) -> None:
    """Run the test suite on one Python, on asyncio alone or on asyncio and trio."""
    package, selected = BACKEND_SETS[backends]
    session.install(package, *_groups("tests", "coverage"))
    if "trio" not in selected:
        session.run(
            "python",
            "-c",
            "import importlib.util, sys;"
            " sys.exit('trio is installed in an asyncio-only session')"
            " if importlib.util.find_spec('trio') else None",
        )
    mode = ASYNCIO_MODES.get((str(session.python), backends), "default")
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        *XDIST,
        *session.posargs,
        env={
            "CORRAL_TEST_BACKENDS": selected,
            "CORRAL_ASYNCIO_MODE": mode,
            **_coverage_env(session),
        },
    )


@nox.session
def coverage(session: nox.Session) -> None:
    """Combine the test sessions' branch coverage and fail below the floor in pyproject.toml."""
    session.install(*_groups("coverage"))
    data = sorted(p.name for p in ROOT.glob(".coverage.*"))
    if not data:
        session.error("no coverage data: run the test sessions first (`nox` does)")
    session.log(f"combining {len(data)} data files")
    session.run("coverage", "combine", "--quiet")
    # fail_under comes from [tool.coverage.report].
    session.run("coverage", "report")


@nox.session
def lint(session: nox.Session) -> None:
    """Check the code with ruff's linter and formatter."""
    session.install(*_groups("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """Type-check src and the public API as users write it, with mypy --strict."""
    session.install(".[trio,cli,server]", *_groups("typing"))
    # Files and strictness come from [tool.mypy] in pyproject.toml.
    session.run("mypy", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs, treating every warning (and broken reference) as an error."""
    session.install(".[trio,cli,server]", *_groups("docs"))
    session.run(
        "sphinx-build",
        "--fresh-env",  # a cached environment would not repeat the warnings of unchanged pages
        "-W",
        "--keep-going",
        "-n",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


@nox.session(default=False)
def kill_resume(session: nox.Session) -> None:
    """SIGKILL ``corral run`` at 50 random points and resume after each one."""
    session.install(".[trio,cli,server]", *_groups("tests"))
    session.run(
        "pytest",
        "tests/cli/test_cli_kill_resume.py",
        *session.posargs,
        env={"CORRAL_KILL_POINTS": "50"},
    )


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run every script in benchmarks/; extra arguments are passed to each of them."""
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
    if not scripts:
        session.error("benchmarks/ holds no benchmark script")
    session.install(".[trio,cli,server]", *_groups("bench"))
    for script in scripts:
        session.run("python", str(script.relative_to(ROOT)), *session.posargs)


def _soak(session: nox.Session, requests: int) -> None:
    session.install(".[trio,cli,server]", *_groups("tests"))
    session.run(
        "pytest",
        "tests/soak",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={
            "CORRAL_SOAK_REQUESTS": str(requests),
            "CORRAL_TEST_BACKENDS": "asyncio,trio",
        },
    )


@nox.session(python=PYTHONS[0])
def soak_short(session: nox.Session) -> None:
    """Soak ``Client.stream`` with 5,000 requests per backend through 5% faults (see tests/soak)."""
    _soak(session, 5_000)


@nox.session(default=False)
def soak(session: nox.Session) -> None:
    """Soak ``Client.stream`` with 100,000 requests per backend through 5% faults."""
    _soak(session, 100_000)
