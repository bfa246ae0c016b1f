"""One install: the package built into a fresh virtual environment gives the two commands, which work
end to end like broker.py and client.py.

How, to stay fast and offline: the wheel is built from a copy of the sources with
``pip wheel --no-deps --no-build-isolation`` (setuptools and wheel come from requirements.txt), and is
installed with ``pip --python VENV install --no-deps --no-index`` into a venv made with
``--without-pip``. The runtime dependencies are not downloaded again: a .pth file lets the new venv see
the ones already installed from requirements.txt, and ``pip check`` proves that they satisfy the
package's own metadata. The commands then run from a folder outside the checkout, and the test checks
that ``chat`` is imported from the new venv, not from this checkout.
"""

from __future__ import annotations

import os
import signal
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from chat import __version__
from conftest import HOST, LISTENING, REPO, Process, Processes, joined, said

BUILD_TIMEOUT = 120  # seconds for each pip step, on a loaded machine


def run(*argv: str, cwd: Path) -> str:
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the package installed from its wheel; returns its bin (Scripts) folder."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"  # a copy: building in the checkout would leave build/ and *.egg-info there
    shutil.copytree(REPO / "chat", source / "chat", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(base / "dist"),
        str(source), cwd=base)
    (wheel,) = (base / "dist").glob("lanchat-*.whl")

    venv = base / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=base)
    scripts = venv / ("Scripts" if os.name == "nt" else "bin")
    python = scripts / ("python.exe" if os.name == "nt" else "python")
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=base).strip())
    (site / "installed-requirements.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = (sys.executable, "-m", "pip", "--python", str(python))
    run(*pip, "install", "-q", "--no-deps", "--no-index", str(wheel), cwd=base)
    run(*pip, "check", cwd=base)  # the package's declared dependencies are all there
    where = run(str(python), "-c", "import chat; print(chat.__file__)", cwd=base).strip()
    assert Path(where).is_relative_to(venv), f"chat was imported from {where}, not from the new venv"
    return scripts


@pytest.mark.timeout(240)
def test_the_installed_commands_chat_end_to_end(procs: Processes, installed: Path, tmp_path: Path) -> None:
    """One test, so that parallel workers do not each build the package."""
    for command in ("lanchat", "lanchat-broker"):
        shown = procs.command(installed / command, "--version", cwd=tmp_path)
        shown.assert_exit(0)
        assert shown.stdout() == [f"{command} {__version__} (protocol chat/2)"]

    broker = procs.command(installed / "lanchat-broker", "--host", HOST, "--port", "0", "--pub-port", "0",
                           "--db", str(tmp_path / "history.db"), cwd=tmp_path)
    port = broker.expect(LISTENING)["port"]
    broker.expect(rf"^broker: clients join with: lanchat --host {HOST} --port {port}$")

    def client(name: str) -> Process:
        process = procs.command(installed / "lanchat", "--host", HOST, "--port", port, "--name", name,
                                "--history", "0", cwd=tmp_path, stdin=True)
        process.expect(joined(name))
        return process

    def say(process: Process, line: str | None) -> None:
        assert process.proc.stdin is not None
        if line is None:
            process.proc.stdin.close()
        else:
            process.proc.stdin.write(line.encode() + b"\n")
            process.proc.stdin.flush()

    alice = client("alice")
    bob = client("bob")
    alice.expect(joined("bob"))
    say(alice, "installed and working")
    bob.expect(said("alice", "installed and working"))
    for process in (alice, bob):
        say(process, None)
        process.assert_exit(0)
    broker.signal(signal.SIGTERM)
    broker.assert_exit(0)
    assert (tmp_path / "history.db").exists()
