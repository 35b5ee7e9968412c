"""scripts/setup_env.sh installs for the machine it runs on: a .venv made without a GPU is reinstalled
(with the vllm extra) when it first runs where nvidia-smi works, and is left alone otherwise."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "setup_env.sh"


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_venv(tmp_path):
    """A venv whose python only records the pip commands it is given (nothing is installed), and a folder
    of commands for PATH where a working nvidia-smi can be put."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    _executable(venv / "bin" / "python", f'#!/bin/sh\necho "$@" >> {log}\n')
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("sha256sum", "cut", "cat", "dirname", "env", "sh", "bash"):
        found = shutil.which(tool)
        assert found, tool
        os.symlink(found, tools / tool)
    return venv, log, tools


def _setup(venv: Path, tools: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(tools), "PSPO_VENV": str(venv), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, cwd=REPO, timeout=60
    )


def _installs(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.is_file() else []
    log.unlink(missing_ok=True)
    return [line for line in lines if " install " in f" {line} "]


def test_a_cpu_venv_is_reinstalled_with_vllm_on_a_gpu_machine(fake_venv):
    venv, log, tools = fake_venv
    assert _setup(venv, tools).returncode == 0  # a machine without a GPU
    cpu = _installs(log)
    assert any("torch==2.13.0" in line for line in cpu) and any(".[dev]" in line for line in cpu)
    assert _setup(venv, tools).returncode == 0
    assert _installs(log) == []  # installed for this machine already: nothing to do
    _executable(tools / "nvidia-smi", "#!/bin/sh\nexit 0\n")  # the same .venv on a machine with a GPU
    result = _setup(venv, tools)
    assert result.returncode == 0, result.stderr
    commands = log.read_text().splitlines()
    gpu = _installs(log)
    assert any(".[dev,vllm]" in line for line in gpu), gpu
    # the recorded python answers every check with success, as a CPU build of torch does: it goes first
    assert any(line.endswith("uninstall -y torch") for line in commands), commands
    assert _setup(venv, tools).returncode == 0
    assert _installs(log) == []
    (tools / "nvidia-smi").unlink()  # and back on a machine without one: the CPU install again
    assert _setup(venv, tools).returncode == 0
    assert any("torch==2.13.0" in line for line in _installs(log))
