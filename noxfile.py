"""Sessions for tests, linting, type checking, docs and benchmarks.

``nox`` runs the default sessions: the test matrix (3 Pythons x 2 backend sets), lint, typing,
docs and a short soak (``soak_short``, 5,000 requests per backend). ``nox -s soak`` (100,000
requests per backend) and ``nox -s bench`` (the benchmarks) are never part of the default run.
"""

from __future__ import annotations

import pathlib

import nox

nox.needs_version = ">=2025.2.9"
# Plain venv + pip: it needs nothing but Python on a fresh machine, and pip honours the
# machine's own pip configuration (indexes, constraints, certificates).
nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"

ROOT = pathlib.Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHONS = ["3.11", "3.12", "3.13"]

# Backend set -> (extras installed, backends the test suite runs; see tests/conftest.py).
# The asyncio set installs no trio at all, so it also proves corral works without it.
BACKEND_SETS = {
    "asyncio": (".[cli,server]", "asyncio"),
    "asyncio+trio": (".[trio,cli,server]", "asyncio,trio"),
}


def _groups(*names: str) -> tuple[str, ...]:
    return nox.project.dependency_groups(PYPROJECT, *names)


@nox.session(python=PYTHONS)
@nox.parametrize("backends", list(BACKEND_SETS))
def tests(session: nox.Session, backends: str) -> None:
    """Run the test suite on one Python, on asyncio alone or on asyncio and trio."""
    package, selected = BACKEND_SETS[backends]
    session.install(package, *_groups("tests"))
    if "trio" not in selected:
        session.run(
            "python",
            "-c",
            "import importlib.util, sys;"
            " sys.exit('trio is installed in an asyncio-only session')"
            " if importlib.util.find_spec('trio') else None",
        )
    session.run("pytest", *session.posargs, env={"CORRAL_TEST_BACKENDS": selected})


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
