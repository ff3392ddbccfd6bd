"""Each extra of pyproject.toml, installed into a clean venv, is enough for its rooms and no more.

An edge box installs ``bacpipes[edge]`` and must get the agent without Prefect, Streamlit or scikit-learn;
a data scientist installs ``bacpipes[models]`` for models/ and ``load_readings`` without the server stack.
Only a clean venv shows it: the development venv has everything, so a new ``import sklearn`` in edge/
passes every other test. Each venv is an editable install (``uv pip install -e '.[extra]'``), so it always
runs the working tree's code, while what it installs depends on pyproject.toml alone: the venvs are cached
under ``.venv-extras/<hash of pyproject.toml>/`` and rebuilt when it changes, with uv (seconds an extra,
where pip took five minutes for [central]).

In each venv a child process runs the CLI's ``--help`` for the main commands (nothing heavy may load for
them), imports every module reachable from the extra's rooms, following lazy (function-level) imports too,
and asks whether the packages the extra leaves out are installed.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import fresh_database

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".venv-extras"
UV = "uv==0.13.9"
ROOMS = ("bacpipes", "models", "edge", "central", "flows", "sim", "streamlit_app")
HEAVY = ("sklearn", "skl2onnx", "onnx", "onnxruntime", "prefect", "streamlit")
# Streamlit runs these as scripts: importing one renders the page, so their imports are imported instead
SCRIPTS = ("streamlit_app.app", "streamlit_app.views")
CLI_HELP = [[], ["edge", "run"], ["ui"], ["flows", "run"], ["sim"], ["demo"]]


@dataclass(frozen=True)
class Extra:
    starts: tuple[str, ...]  # modules (or packages: every module under them) the extra must import
    absent: tuple[str, ...]  # packages it must not install
    leave_out: tuple[str, ...] = ()  # modules under `starts` that another extra provides for


EXTRAS = {
    # the plain install: the shared core, the CLI's parser, the virtual building (`bacpipes sim`)
    # (`bacpipes sim --building energyplus:…` is [energyplus]'s)
    # (bacpipes.offsite's boto3 comes with [edge] and [central], the roles that upload backups)
    "": Extra(("bacpipes", "sim.server", "sim.backfill"), HEAVY,
              leave_out=("bacpipes.cli", "sim.energyplus", "bacpipes.offsite")),
    "edge": Extra(("edge", "bacpipes.offsite"), ("sklearn", "skl2onnx", "prefect", "streamlit")),
    "models": Extra(("models", "bacpipes.readings"), ("prefect", "streamlit")),
    # the closed-loop flow's EnergyPlus building (building="energyplus") is [energyplus]'s
    "central": Extra(("central", "flows"), ("streamlit",), leave_out=("sim.energyplus",)),
    "app": Extra(("streamlit_app",), ("prefect",)),
    # [all] is not built here: the suite itself runs in `.[all,dev]` and imports every room
    # what the demo adds to [all]: the pip-installed servers
    "demo": Extra(("bacpipes.cli.servers",), ()),
}

# Runs inside the extra's venv (stdlib only until it imports ours): prints one JSON report.
CHECK = """
import contextlib, importlib, importlib.util, io, json, sys
spec = json.loads(sys.argv[1])
from bacpipes.cli import main
helps = {}
for argv in spec["cli"]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([*argv, "--help"])
        except SystemExit as exit:
            helps[" ".join(argv) or "-"] = (exit.code, "usage: bacpipes" in out.getvalue())
loaded_by_help = sorted(m for m in spec["heavy"] if m in sys.modules)
failed = {}
for name in spec["modules"]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
present = [m for m in spec["absent"] if importlib.util.find_spec(m) is not None]
print(json.dumps({"helps": helps, "loaded_by_help": loaded_by_help, "failed": failed, "present": present}))
"""


READ = """
import sys
from bacpipes.readings import load_readings
from bacpipes.settings import load_settings
settings = load_settings(None, site={"id": "lab", "timezone": "Asia/Macau"})
frame = load_readings(["ZN-T"], settings=settings, dsn=sys.argv[1], as_pandas=True)
print(type(frame).__module__.split(".")[0], frame["value"].tolist(), frame["time"].iloc[0].isoformat())
"""


# --- what an extra must import: our modules reachable from its rooms, and the third-party ones they name --


def our_modules() -> dict[str, Path]:
    found = {}
    for top in ROOMS:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def named_imports(path: Path, package: str) -> set[str]:
    """Every module the file imports, at the top or inside functions (not under TYPE_CHECKING);
    ``from X import a`` names ``X``, and ``X.a`` too when X is ours (a may be a module: the caller keeps
    it if so)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    head = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*head, base] if base else head)
                names.add(base)
                if base.split(".")[0] in ROOMS:
                    names.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    with PARSING:
        tree = ast.parse(path.read_text(), str(path))
    visit(tree)
    return names


# CPython 3.11 keeps ast.parse's recursion depth per interpreter, not per thread: two of the extras' threads
# parsing at once fail its check ("SystemError: AST constructor recursion depth mismatch", on CI and under
# xdist's load, where parsing the same file again failed too). One parse at a time.
PARSING = threading.Lock()


def to_import(extra: Extra) -> list[str]:
    """Our modules reachable from the extra's starts (scripts replaced by what they import), then the
    third-party modules any of them imports, lazily or not."""
    ours = our_modules()

    def under(module: str, prefixes: tuple[str, ...]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    todo = [m for m in ours if under(m, extra.starts) and not under(m, extra.leave_out)]
    seen: set[str] = set()
    third_party: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = ours[module]
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name in named_imports(path, package):
            top = name.split(".")[0]
            if top in ROOMS:
                todo += [name] if name in ours and not under(name, extra.leave_out) else []
            elif top not in sys.stdlib_module_names:
                third_party.add(name)
    runnable = sorted(m for m in seen if not under(m, SCRIPTS) and not m.endswith("__main__"))
    return runnable + sorted(third_party)


# --- the cached venvs ----------------------------------------------------------------------------------


def uv() -> Path:
    """uv from a small venv of its own (pinned): it installs an extra in seconds where pip takes minutes."""
    tool = CACHE / "tool"
    binary, stamp = tool / "bin" / "uv", tool / ".installed"
    if not (stamp.exists() and stamp.read_text() == UV):
        shutil.rmtree(tool, ignore_errors=True)
        run([sys.executable, "-m", "venv", str(tool)])
        run([str(tool / "bin" / "python"), "-m", "pip", "install", "--quiet", UV])
        stamp.write_text(UV)
    return binary


def cache_home() -> Path:
    """The cache of this pyproject.toml's venvs (and of their bytecode)."""
    return CACHE / hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]


def venv_for(extra: str) -> Path:
    """A venv with ``-e .[extra]`` installed, cached per pyproject.toml (built once, under its own lock: the
    extras' venvs can be built side by side)."""
    home = cache_home() / (extra or "core")
    python = home / "bin" / "python"
    with locked(".lock"):  # the uv tool and the cache's tidying, one process at a time
        binary = uv()
        home.parent.mkdir(exist_ok=True)
        for old in CACHE.iterdir():  # venvs of an older pyproject.toml
            if old.is_dir() and old.name not in (home.parent.name, "tool"):
                shutil.rmtree(old)
    with locked(f".lock-{home.parent.name}-{home.name}"):
        if not (home / ".installed").exists():
            shutil.rmtree(home, ignore_errors=True)
            base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
            run([str(binary), "venv", "--quiet", "--python", str(base), str(home)])
            run([str(binary), "pip", "install", "--quiet", "--python", str(python),
                 "-e", f"{REPO}[{extra}]" if extra else str(REPO)])
            (home / ".installed").touch()
    return python


@contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock on CACHE/name, between threads and processes alike (a file of its own each time)."""
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / name, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=child_env(), **kwargs)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def child_env() -> dict[str, str]:
    """This environment without what would point a child at the development venv, and with bytecode
    written under the cache: compiling what a venv imports once, not on every run (nor the whole venv at
    install, which costs minutes), and nothing written into the source tree."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONPYCACHEPREFIX": str(cache_home() / "pycache")}


# --- the tests -----------------------------------------------------------------------------------------


@dataclass
class Built:
    python: Path  # the extra's venv
    report: dict  # what CHECK found in it, and the console script's --help


CHECKS = threading.Semaphore(2)  # a check imports a lot: one at a time per core


def build_and_check(extra: str, cwd: Path) -> Built:
    python = venv_for(extra)
    with CHECKS:
        spec = {"cli": CLI_HELP, "heavy": HEAVY, "modules": to_import(EXTRAS[extra]),
                "absent": EXTRAS[extra].absent}
        output = run([str(python), "-c", CHECK, json.dumps(spec)], cwd=cwd).stdout
        report = json.loads(output.splitlines()[-1])
        report["console"] = run([str(python.parent / "bacpipes"), "--help"], cwd=cwd).stdout  # the real one
    return Built(python, report)


@pytest.fixture(scope="module")
def extras(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Future[Built]]:
    """Every extra this session's tests need, each venv built and checked in a thread of its own: a build
    mostly waits on the network and the disk, so one after the other they cost the suite a minute and
    more. The tests take the results in their own order."""
    needed = set()
    for item in request.session.items:
        if item.module is request.module and isinstance(item, pytest.Function):
            params = item.callspec.params if hasattr(item, "callspec") else {}
            needed |= {params["extra"]} if "extra" in params else set(USES.get(item.originalname, ()))
    pool = ThreadPoolExecutor(max(1, len(needed)), thread_name_prefix="extra")
    futures = {e: pool.submit(build_and_check, e, tmp_path_factory.mktemp("extra")) for e in needed}
    pool.shutdown(wait=False)  # the threads finish their work; the tests wait for what they need
    return futures


@pytest.mark.parametrize("extra", list(EXTRAS), ids=[e or "core" for e in EXTRAS])
def test_an_extra_installs_what_its_rooms_import_and_leaves_out_the_rest(
    extra: str, extras: dict[str, Future[Built]]
) -> None:
    report = extras[extra].result().report
    assert report["failed"] == {}, f"bacpipes[{extra}] cannot import: {report['failed']}"
    assert report["present"] == [], f"bacpipes[{extra}] installs {report['present']}"
    assert all(report["helps"][" ".join(a) or "-"] == [0, True] for a in CLI_HELP), report["helps"]
    assert report["loaded_by_help"] == [], "the CLI's --help imported " + ", ".join(report["loaded_by_help"])
    assert "usage: bacpipes" in report["console"]


def test_a_data_scientist_reads_readings_as_pandas_without_the_server_stack(
    extras: dict[str, Future[Built]], tmp_path: Path
) -> None:
    """load_readings(as_pandas=True) needs pyarrow under polars: the [models] venv reads a real row."""
    python = extras["models"].result().python
    with fresh_database() as dsn:
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO device (site_id, device_id, address) VALUES ('lab', 1, 'x')")
            conn.execute("INSERT INTO point (site_id, point_id, device_id, object_type, object_instance,"
                         " object_name) VALUES ('lab', 7, 1, 'analog-input', 1, 'ZN-T')")
            conn.execute("INSERT INTO sensor_readings (time, site_id, point_id, value)"
                         " VALUES ('2026-11-20 10:00+08', 'lab', 7, 23.5)")
        out = run([str(python), "-c", READ, dsn], cwd=tmp_path).stdout.split()
    assert out == ["pandas", "[23.5]", "2026-11-20T10:00:00+08:00"]


def test_a_command_whose_extra_is_missing_says_which_to_install(
    extras: dict[str, Future[Built]], tmp_path: Path
) -> None:
    """An edge box asked to run a flow: one line naming the extra, not a ModuleNotFoundError traceback."""
    python = extras["edge"].result().python
    config = tmp_path / "site.toml"
    config.write_text('[database]\ndsn = "postgresql://postgres@127.0.0.1:5432/postgres"\n')
    command = [str(python.parent / "bacpipes"), "flows", "run", "baseline", "--config", str(config)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env=child_env(), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ("bacpipes: error: this command needs prefect, which this install lacks: "
                                  "pip install 'bacpipes[central]'"), out.stderr


USES = {  # the venvs the tests above use besides their own extra's
    test_a_data_scientist_reads_readings_as_pandas_without_the_server_stack.__name__: ("models",),
    test_a_command_whose_extra_is_missing_says_which_to_install.__name__: ("edge",),
}
