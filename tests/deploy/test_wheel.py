"""The shipped profiles are found after a non-editable install of the wheel: the wheel is built
from this checkout (pip, with build isolation as a user's install has) and installed into a
fresh virtual environment, whose commands then run from a directory without profiles/. The
fresh environment borrows the test environment's installed dependencies (a path entry, not
its ptystream, which is an editable install) so that nothing is downloaded but the build's
setuptools."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))


def run(*args, cwd=None, timeout=600):
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", ROOT)
    (wheel,) = (tmp / "dist").glob("ptystream-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    (Path(site.stdout.strip()) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"])
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel)
    return venv, tmp


def test_the_wheel_holds_the_shipped_profiles(installed):
    venv, tmp = installed
    where = run(
        venv / "bin" / "python", "-c", "import ptystream; print(ptystream.__file__)", cwd=tmp
    )
    assert str(venv) in where.stdout  # the wheel's copy, not the checkout
    listed = run(venv / "bin" / "ptystream", "profiles", "list", cwd=tmp)
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip()]
    assert sorted(set(names) & set(SHIPPED)) == SHIPPED
    assert str(ROOT) not in listed.stdout
    shown = run(venv / "bin" / "ptystream", "profiles", "show", "demo", cwd=tmp)
    assert "name: demo" in shown.stdout
