"""README.md, docs/, .ci/run and the Dockerfile stay in step; README and docstring examples run."""

from __future__ import annotations

import doctest
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

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


def container_doc() -> str:
    return (ROOT / "docs" / "container.md").read_text()


def test_container_doc_matches_dockerfile():
    section = container_doc()
    build = re.search(r"docker build -t (\S+) \.", section)
    assert build, "docs/container.md shows the docker build line"
    tag = build.group(1)
    runs = [r.split("#")[0].rstrip() for r in re.findall(r"^docker run .*$", section, re.MULTILINE)]
    assert runs, "docs/container.md shows docker run lines"
    for run in runs:
        assert "--gpus all" in run and f" {tag}" in run, run
        # A run that writes to the host does so as the host user, never as root.
        if re.search(r"-v \S+:/results", run):
            assert '--user "$(id -u):$(id -g)"' in run, run
    # The mounted folder exists (and so belongs to the user) before the first run.
    assert section.index("mkdir -p results") < section.index("docker run")
    # The default command (no arguments after the image) writes to the mounted /results.
    assert any(r.endswith(f" {tag}") and re.search(r"-v \S+:/results", r) for r in runs)
    # Options are passed after the image name, as gpu-softmax arguments.
    assert any(re.search(rf" {re.escape(tag)} bench .*--out /results", r) for r in runs)
    # The Dockerfile's own usage comment names the same image and runs as the user too.
    docker = (ROOT / "Dockerfile").read_text()
    assert f"docker build -t {tag} ." in docker
    for run in re.findall(r"^#\s+(docker run .*)$", docker, re.MULTILINE):
        assert ("-v " not in run) or '--user "$(id -u):$(id -g)"' in run, run
    # README links the container page.
    assert "(docs/container.md)" in (ROOT / "README.md").read_text()


def test_dockerfile_pins_readme_torch_writable_paths_and_no_unused_tools():
    docker = (ROOT / "Dockerfile").read_text()
    pin = re.search(r'"torch==([\w.+]+)"', readme_commands()[1])
    assert pin, "README's test command pins torch"
    assert f'RUN python -m pip install "torch=={pin.group(1)}"' in docker.splitlines()
    apt = re.search(r"apt-get install ([^\n\\]*)", docker).group(1).split()
    assert "git" not in apt
    env = dict(re.findall(r"\b(HOME|CUPY_CACHE_DIR)=(\S+)", docker))
    # Writable whatever --user the container runs as: the mounted results or /tmp.
    assert env.get("HOME", "").startswith("/tmp"), env
    assert env.get("CUPY_CACHE_DIR", "").startswith(("/results/", "/tmp")), env


def test_results_folder_is_ignored_by_git_and_docker():
    # results/ holds the container's output and CuPy cache: never committed, never copied into an image.
    assert "/results/" in (ROOT / ".gitignore").read_text().split()
    assert "results" in (ROOT / ".dockerignore").read_text().split()
    # ... while the committed GPU runs under benchmarks/results stay tracked.
    p = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/x.json"], cwd=ROOT)
    assert p.returncode == 1


def test_readme_opens_with_commands_then_what_it_is_and_links_docs():
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("\n## ")]
    assert "**What it is.**" in head
    assert len(text) < 8000, "long material belongs in docs/"
    links = re.findall(r"\]\((docs/[\w.]+\.md)\)", text)
    assert {"docs/api.md", "docs/torch.md", "docs/benchmarking.md", "docs/container.md",
            "docs/gpu_checks.md", "docs/vocab_parallel.md", "docs/development.md"} <= set(links)
    for doc in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([\w./]+\.md)\)", doc.read_text()):
            assert (doc.parent / target).resolve().is_file(), f"{doc.name} links a missing {target}"
    for link in links:
        assert (ROOT / link).is_file(), link


def test_readme_names_the_no_gpu_message_the_cli_prints():
    from gpu_softmax import cli
    from gpu_softmax._cuda.info import gpu_status

    msg = re.search(r"`(no NVIDIA GPU found: using the NumPy reference)`", (ROOT / "README.md").read_text())
    assert msg
    if gpu_status()[0]:
        pytest.skip("a GPU is present: the CLI names the device instead")
    assert msg.group(1) in cli._backend_banner()


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


README_PYTHON_BLOCKS = 3  # NumPy/CuPy, torch, fused linear + cross-entropy


@pytest.mark.parametrize("i", range(README_PYTHON_BLOCKS))
def test_readme_python_examples_run(i):
    blocks = readme_python_blocks()
    assert len(blocks) == README_PYTHON_BLOCKS
    if "torch" in blocks[i] and importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed")
    exec(compile(blocks[i], f"README.md python block {i}", "exec"), {})


def test_ci_runs_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "venv" in ci
    # The line .ci/run extracts is README's test command, exactly.
    extract = re.search(r"^test_cmd=\$\((.*)\)$", ci, re.MULTILINE).group(1)
    p = subprocess.run(["bash", "-c", extract], capture_output=True, text=True, cwd=ROOT)
    assert p.stdout.strip() == readme_commands()[1]


def test_readme_test_command_needs_only_the_extras_it_installs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    cmd = readme_commands()[1]
    if re.search(r"\s(-n|--dist)\s", cmd):
        assert any(r.startswith("pytest-xdist") for r in test_extra), "-n needs pytest-xdist in the test extra"


def test_docstring_examples():
    failures, tried = doctest.testmod(gpu_softmax, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 7
    assert failures == 0


def test_install_hints_name_commands_that_work_from_the_checkout():
    # gpu-softmax is on no package index: `pip install "gpu-softmax[...]"` cannot work; ".[...]" does.
    texts = [ROOT / "README.md", ROOT / "Dockerfile", *(ROOT / "docs").glob("*.md"), *(ROOT / "gpu_softmax").rglob("*.py"),
             ROOT / "tests" / "conftest.py"]
    for path in texts:
        assert "gpu-softmax[" not in path.read_text(), f"{path.relative_to(ROOT)} names gpu-softmax[...]"
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "torch.md").read_text()
    assert 'pip install ".[cuda12x,torch]"' in docs
