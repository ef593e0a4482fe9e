"""The folder plan of DESIGN.md, one row per folder, checked two ways.

- Statically: every ``import`` in a folder's modules (also those inside functions, which run
  later) names only the parts of ptystream the folder may use, and none of the third-party
  packages it must not use.
- At import: each module imported in a fresh interpreter (the trick of tiled's own test that
  ``import tiled.client`` pulls no heavy dependency) leaves the packages the folder must not
  load at import time out of ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ptystream"
STDLIB = sys.stdlib_module_names
#: Parts of ptystream, as named in ``import`` statements (a folder, or a top-level module).
TOP_MODULES = {"types", "optics", "metrics"}


@dataclass(frozen=True)
class Room:
    """What the modules of one folder (or the top-level modules) may import.

    ``uses``: parts of ptystream (besides the folder itself); ``third_party``: the only
    third-party packages allowed, or None for any but ``forbidden``; ``forbidden``: third-party
    packages never imported, even inside a function; ``not_at_import``: packages importing a
    module must not load (TensorFlow is imported by the engine only when it starts).
    """

    modules: tuple[str, ...]
    uses: frozenset[str]
    third_party: frozenset[str] | None = None
    forbidden: frozenset[str] = frozenset()
    not_at_import: frozenset[str] = frozenset()
    exceptions: tuple[tuple[str, frozenset[str]], ...] = ()
    """``(module, more uses)``: a module of the folder allowed more parts of ptystream."""


def _folder(name: str) -> tuple[str, ...]:
    return tuple(
        f"ptystream.{name}.{p.stem}" if p.stem != "__init__" else f"ptystream.{name}"
        for p in sorted((PACKAGE / name).glob("*.py"))
    )


HEAVY = frozenset({"tensorflow", "tiled", "bluesky"})

ROOMS: dict[str, Room] = {
    "types, optics, metrics": Room(
        ("ptystream.types", "ptystream.optics", "ptystream.metrics"),
        uses=frozenset({"types"}),  # metrics names Estimate for type checkers only
        third_party=frozenset({"numpy", "scipy"}),
        not_at_import=HEAVY | {"pydantic"},
    ),
    "config/": Room(
        _folder("config"),
        uses=frozenset({"types"}),
        third_party=frozenset({"numpy", "pydantic", "yaml"}),
        not_at_import=HEAVY,
    ),
    "engine/": Room(
        _folder("engine"),
        uses=frozenset({"types", "optics", "config"}),
        forbidden=frozenset({"bluesky", "event_model", "ophyd", "tiled", "dask", "distributed"}),
        not_at_import=frozenset({"tiled", "bluesky", "event_model"}),
    ),
    "preprocess/": Room(
        _folder("preprocess"),
        uses=frozenset({"types", "config"}),
        third_party=frozenset({"numpy", "scipy", "h5py", "tifffile"}),
        not_at_import=HEAVY,
    ),
    "live/": Room(
        _folder("live"),
        uses=frozenset({"types", "config", "preprocess"}),
        forbidden=frozenset({"tensorflow", "tiled"}),
        not_at_import=frozenset({"tensorflow", "tiled"}),
        exceptions=(
            ("ptystream.live.pipeline", frozenset({"engine", "store"})),
            ("ptystream.live.delivery", frozenset({"store"})),
        ),
    ),
    "store/": Room(
        _folder("store"),
        uses=frozenset({"types", "config", "io"}),
        forbidden=frozenset({"tensorflow", "bluesky", "ophyd", "event_model"}),
        not_at_import=frozenset({"tensorflow", "bluesky", "tiled.server"}),
    ),
    "offline/": Room(
        _folder("offline"),
        uses=frozenset({"types", "config", "engine", "store", "io", "preprocess"}),
        forbidden=frozenset({"tensorflow", "bluesky", "ophyd", "event_model"}),
        not_at_import=frozenset({"tensorflow", "bluesky"}),
    ),
    "io/": Room(
        _folder("io"),
        uses=frozenset({"types"}),
        forbidden=frozenset({"tensorflow", "tiled", "bluesky", "event_model"}),
        not_at_import=HEAVY | {"matplotlib"},
    ),
    "sim/": Room(
        _folder("sim"),
        uses=frozenset({"types", "config", "optics"}),
        forbidden=frozenset({"tensorflow", "tiled"}),
        not_at_import=frozenset({"tensorflow", "tiled"}),
    ),
    "dashboard/": Room(
        _folder("dashboard"),
        uses=frozenset({"store"}),  # the API key kept out of its logs
        forbidden=frozenset({"tensorflow", "bluesky", "event_model", "ophyd"}),
        not_at_import=frozenset({"tensorflow", "bluesky"}),
    ),
    "commands/": Room(
        _folder("commands"),
        uses=frozenset(
            {
                "types",
                "optics",
                "metrics",
                "config",
                "engine",
                "live",
                "store",
                "offline",
                "io",
                "preprocess",
                "sim",
                "dashboard",
            }
        ),  # fmt: skip
        not_at_import=frozenset({"tensorflow"}),  # the serve worker imports it when it starts
    ),
}


def _imports(module: str) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import in ``module``'s source, relative ones resolved."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level + (path.stem == "__init__")]
                base = ".".join([*parent, base] if base else parent)
            if base == "ptystream":  # from ptystream import optics: each name is a part
                found += [(node.lineno, f"ptystream.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def _part(name: str) -> str:
    """The part of ptystream a dotted import names: ``ptystream.live.pipeline`` -> ``live``."""
    return name.split(".")[1] if name.count(".") else ""


def test_every_module_is_in_a_room():
    placed = {m for room in ROOMS.values() for m in room.modules} | {"ptystream"}
    every = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in PACKAGE.rglob("*.py")
    }
    assert every - placed == set(), "modules outside every room of DESIGN.md's folder plan"


@pytest.mark.parametrize("room", list(ROOMS))
def test_static_imports_keep_to_the_folder_plan(room):
    spec = ROOMS[room]
    problems = []
    for module in spec.modules:
        allowed = set(spec.uses) | {_part(module)}
        allowed |= next((more for m, more in spec.exceptions if m == module), frozenset())
        for line, name in _imports(module):
            top = name.split(".")[0]
            if top == "ptystream":
                part = _part(name)
                if part and part != "__version__" and part not in allowed:
                    problems.append(f"{module}:{line} imports {name}")
            elif top not in STDLIB and top != "__future__":
                if top in spec.forbidden or (
                    spec.third_party is not None and top not in spec.third_party
                ):
                    problems.append(f"{module}:{line} imports {name}")
    assert problems == []


def test_nothing_imports_the_commands():
    outside = [m for name, room in ROOMS.items() if name != "commands/" for m in room.modules] + [
        "ptystream"
    ]
    found = [
        f"{m}:{line} imports {name}"
        for m in outside
        for line, name in _imports(m)
        if name.startswith("ptystream.commands")
    ]
    assert found == []


_LOADED = """
import json, sys
report = {}
for module in sys.argv[1:]:
    before = set(sys.modules)
    __import__(module)
    report[module] = sorted(set(sys.modules) - before)
print(json.dumps(report))
"""


@pytest.mark.parametrize("room", list(ROOMS))
def test_importing_a_folder_loads_nothing_forbidden(room):
    spec = ROOMS[room]
    out = subprocess.run(
        [sys.executable, "-c", _LOADED, *spec.modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    bad = {
        module: sorted(m for m in new if m in spec.not_at_import)
        for module, new in loaded.items()
        if any(m in spec.not_at_import for m in new)
    }
    assert bad == {}, f"importing these modules loaded {bad}"


def test_tensorflow_first_does_not_break_the_embedded_tiled_server(tmp_path):
    """TensorFlow loaded before tiled's SQLite catalog broke every write (no FTS5): the engine
    package guards against it, whatever the import order of the process."""
    code = f"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
from ptystream.engine import configure_tensorflow
configure_tensorflow(1)                       # imports tensorflow before any tiled code
from tiled.client import from_uri
from ptystream.store.layout import raw_catalog
from ptystream.store.server import start_embedded_server
server = start_embedded_server({str(tmp_path)!r})
raw_catalog(from_uri(server.uri))             # creating a container writes the FTS index
server.close()
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TILED_RETRY_ATTEMPTS": "1", "TILED_RETRY_TIMEOUT": "1"},
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
