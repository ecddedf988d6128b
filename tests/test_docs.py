"""README.md, .ci/run and the Dockerfile stay in step; docstring examples run."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import gpu_softmax

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block, "README.md must start with a ```bash block of set-up commands"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_has_exactly_two_setup_commands_at_top():
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```bash")
    assert first_block < text.index("\n## "), "the set-up commands come before any section"
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    main_job, tests = cmds
    assert "gpu-softmax bench" in main_job
    assert "pytest" in tests and "[cuda12x,test]" in tests.replace('"', "").replace(".", "", 1)


def test_dockerfile_installs_as_readme_and_runs_bench():
    docker = (ROOT / "Dockerfile").read_text()
    install = readme_commands()[0].split("&&")[0].strip()
    assert f"RUN {install}" in docker.splitlines(), f"Dockerfile must RUN {install!r}, as README.md does"
    assert re.search(r"^FROM nvidia/cuda:12[\w.\-]*runtime", docker, re.MULTILINE), "CUDA 12 runtime base"
    assert 'ENTRYPOINT ["gpu-softmax"]' in docker
    assert re.search(r'^CMD \["bench".*"/results"\]', docker, re.MULTILINE)


def test_ci_runs_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "venv" in ci


def test_docstring_examples():
    failures, tried = doctest.testmod(gpu_softmax, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 7
    assert failures == 0
