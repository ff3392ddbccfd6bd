"""The house plan's import table (../shared/DESIGN.md, "Rooms"), read from every module's imports.

Function-level and TYPE_CHECKING imports count too: a room that needs another only lazily still needs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from bacpipes.zones import ROLES
from models.features import INPUTS

ROOT = Path(__file__).resolve().parent.parent
OURS = {"bacpipes", "bacpipes.cli", "models", "edge", "central", "flows", "sim", "streamlit_app"}
# room -> the rooms it may import (besides itself and third-party code)
ALLOWED = {
    "bacpipes": set(),
    "bacpipes.cli": OURS,  # the composition root; nothing else may import it
    "models": set(),
    "edge": {"bacpipes", "models"},
    "central": {"bacpipes", "models"},
    "flows": {"central", "models", "bacpipes", "sim"},
    "streamlit_app": {"bacpipes", "central", "models"},
    "sim": {"bacpipes", "models"},
}
# the ML package stays usable without the server stack
MODELS_FORBIDDEN = {"psycopg", "prefect", "streamlit", "bacpypes3", "paho"}


def room(module: str) -> str | None:
    if module == "bacpipes.cli" or module.startswith("bacpipes.cli."):
        return "bacpipes.cli"
    top = module.split(".")[0]
    return top if top in OURS else None


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from bacpipes import cli` imports the room bacpipes.cli
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names
                      if f"{name}.{a.name}" == "bacpipes.cli"]
    return found


def modules() -> list[tuple[str, Path]]:
    out = []
    for top in ("bacpipes", "models", "edge", "central", "flows", "sim", "streamlit_app"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def test_every_room_imports_only_what_the_plan_allows() -> None:
    broken = []
    for module, path in modules():
        own = room(module)
        assert own is not None
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for line, name in imports(path, package):
            other = room(name)
            if other is not None and other != own and other not in ALLOWED[own]:
                broken.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {name}")
            if own == "models" and name.split(".")[0] in MODELS_FORBIDDEN:
                broken.append(f"{path.relative_to(ROOT)}:{line}: models imports {name} (not pure)")
    assert not broken, "imports against DESIGN.md's table:\n" + "\n".join(broken)


def test_the_rule_reader_sees_a_wrong_arrow(tmp_path: Path) -> None:
    """The checker itself: a core module importing the edge, relative or absolute, is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from edge.agent import run_agent\nfrom ..cli import demo\nimport sim.server\n")
    names = [name for _, name in imports(bad, "bacpipes.sub")]
    assert [room(n) for n in names] == ["edge", "bacpipes.cli", "sim"]


def test_a_zone_gives_the_feature_builder_exactly_its_inputs() -> None:
    """`bacpipes.zones` (core) and `models.features` (pure) cannot import each other: the names must agree."""
    assert ROLES == INPUTS
