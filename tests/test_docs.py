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
    assert "pytest" in tests
    extras = re.search(r"\.\[([\w,]+)\]", tests)
    assert extras and {"cuda12x", "test"} <= set(extras.group(1).split(",")), tests


def test_dockerfile_installs_as_readme_and_runs_bench():
    docker = (ROOT / "Dockerfile").read_text()
    lines = docker.splitlines()
    install = readme_commands()[0].split("&&")[0].strip()
    assert f"RUN {install}" in lines, f"Dockerfile must RUN {install!r}, as README.md does"
    assert lines.count(f"RUN {install}") == 1
    # The package is installed from the copied sources, after they are copied.
    copy = next(i for i, ln in enumerate(lines) if ln.startswith("COPY "))
    assert lines.index(f"RUN {install}") > copy
    # Any other pip line only adds baselines (torch, ...), never a different install of the package.
    for ln in lines:
        if "pip install" in ln and ln != f"RUN {install}":
            assert "." not in ln.split("pip install", 1)[1].split(), ln
    assert re.search(r"^FROM nvidia/cuda:12[\w.\-]*runtime", docker, re.MULTILINE), "CUDA 12 runtime base"
    assert 'ENTRYPOINT ["gpu-softmax"]' in docker
    assert re.search(r'^CMD \["bench".*"/results"\]', docker, re.MULTILINE)
    assert re.search(r"^VOLUME /results", docker, re.MULTILINE)


def test_readme_container_section_matches_dockerfile():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Container\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, "README.md has a Container section"
    section = m.group(1)
    build = re.search(r"docker build -t (\S+) \.", section)
    assert build, "the Container section shows the docker build line"
    tag = build.group(1)
    runs = [r.split("#")[0].rstrip() for r in re.findall(r"^docker run .*$", section, re.MULTILINE)]
    assert runs, "the Container section shows docker run lines"
    for run in runs:
        assert "--gpus all" in run and f" {tag}" in run, run
    # The default command (no arguments after the image) writes to the mounted /results.
    assert any(r.endswith(f" {tag}") and re.search(r"-v \S+:/results", r) for r in runs)
    # Options are passed after the image name, as gpu-softmax arguments.
    assert any(re.search(rf" {re.escape(tag)} bench .*--out /results", r) for r in runs)
    # The Dockerfile's own usage comment names the same image.
    docker = (ROOT / "Dockerfile").read_text()
    assert f"docker build -t {tag} ." in docker


def test_ci_runs_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "venv" in ci


def test_docstring_examples():
    failures, tried = doctest.testmod(gpu_softmax, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 7
    assert failures == 0
