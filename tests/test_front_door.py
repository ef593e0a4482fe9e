"""The front door: ``from ptystream import ...`` gives what a user scripts with, and importing
it loads neither TensorFlow nor the Tiled server (checked in fresh interpreters)."""

import subprocess
import sys

import pytest

import ptystream


def _loaded_after(code: str) -> list[str]:
    """Heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\nimport sys\n"
        "heavy = ('tensorflow', 'tiled.server', 'tiled', 'bluesky', 'ptystream.engine.ad')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return [m for m in out.stdout.strip().split(",") if m]


def test_importing_the_package_loads_nothing_heavy():
    assert _loaded_after("import ptystream") == []


def test_every_public_name_loads_without_tensorflow_or_the_tiled_server():
    loaded = _loaded_after(
        "from ptystream import *\n"
        "import ptystream\n"
        "assert all(getattr(ptystream, n) is not None for n in ptystream.__all__)"
    )
    assert "tensorflow" not in loaded
    assert "tiled.server" not in loaded
    assert "ptystream.engine.ad" not in loaded


def test_the_engine_package_and_the_callback_load_no_tensorflow():
    assert "tensorflow" not in _loaded_after("import ptystream.engine, ptystream.live.callback")


@pytest.mark.parametrize("name", [n for n in ptystream.__all__ if n != "__version__"])
def test_each_name_is_the_object_its_module_defines(name):
    import importlib

    module = importlib.import_module(ptystream._WHERE[name])
    assert getattr(ptystream, name) is getattr(module, name)
    assert name in dir(ptystream)


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="has no attribute 'LiveCallback'"):
        ptystream.LiveCallback  # noqa: B018
