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


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined, instructions = "", []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        stripped = line.rstrip()
        continued = stripped.endswith("\\")
        joined += stripped[:-1] + " " if continued else stripped
        if not continued:
            word, _, rest = joined.strip().partition(" ")
            instructions.append((word.upper(), " ".join(rest.split())))
            joined = ""
    return instructions


def dockerfile_args() -> dict[str, str]:
    """Each ARG's default (an ARG without one maps to "")."""
    return dict((a.split("=", 1) + [""])[:2] for word, a in dockerfile_instructions() if word == "ARG")


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def test_dockerfile_installs_as_readme_and_runs_bench():
    instructions = dockerfile_instructions()
    runs = [a for word, a in instructions if word == "RUN"]
    args = dockerfile_args()
    # The package goes in with the extras of README's first command (the default stack's), once,
    # from the copied sources, after they are copied.
    extras = re.search(r'pip install "(\.\[[\w,]+\])"', readme_commands()[0]).group(1)
    installs = [i for i, (word, a) in enumerate(instructions) if word == "RUN" and "pip install" in a
                and re.search(r'"\.\[', a)]
    assert len(installs) == 1, installs
    (install,) = installs
    assert f'"{extras}"' in expand(instructions[install][1], args), instructions[install]
    copy = next(i for i, (word, a) in enumerate(instructions) if word == "COPY" and a.startswith(". "))
    assert install > copy
    # Any other pip line only adds baselines (torch, ...), never a different install of the package.
    for a in runs:
        if "pip install" in a and not re.search(r'"\.\[', a):
            assert "." not in a.split("pip install", 1)[1].split(), a
    assert ("ENTRYPOINT", '["gpu-softmax"]') in instructions
    assert any(word == "CMD" and re.fullmatch(r'\["bench".*"/results"\]', a) for word, a in instructions)
    assert ("VOLUME", "/results") in instructions


def test_dockerfile_base_image_driver_and_cuda_builds_agree():
    args = dockerfile_args()
    (base,) = [expand(a, args) for word, a in dockerfile_instructions() if word == "FROM"]
    image = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu[\d.]+", base)
    assert image, base
    major, minor = image.groups()
    # One CUDA major for the image, CuPy (the extra) and torch (the index it comes from).
    assert args["CUPY_EXTRA"] == f"cuda{major}x" == "cuda12x", args  # the default stack is the default extra
    assert re.fullmatch(rf"https://\S+/whl/cu{major}\d+", args["TORCH_INDEX"]), args
    # The driver the Dockerfile and docs/container.md state is the one the base image requires.
    docker = (ROOT / "Dockerfile").read_text()
    assert f"CUDA {major}.{minor} or newer" in docker and "R560" in docker
    row = next(ln for ln in container_doc().splitlines() if ln.startswith("| CUDA 12 (default)"))
    assert f"CUDA {major}.{minor} or newer" in row and "R560" in row
    # The CUDA 13 stack: base image, extra and torch from the package index, in the doc's build line.
    build13 = next(ln for ln in container_doc().splitlines() if ln.startswith("docker build") and "cuda13x" in ln)
    assert re.search(r"--build-arg CUDA_BASE=nvidia/cuda:13\.\d+\.\d+-runtime-ubuntu", build13)
    assert "--build-arg CUPY_EXTRA=cuda13x" in build13 and "--build-arg TORCH_INDEX= " in build13
    row13 = next(ln for ln in container_doc().splitlines() if ln.startswith("| CUDA 13"))
    assert "R580" in row13
    for name in re.findall(r"--build-arg (\w+)=", build13):
        assert name in args, f"docs/container.md passes {name}, which the Dockerfile does not declare"


def test_dockerfile_runs_as_a_user_keeps_no_pip_cache_and_records_the_commit():
    instructions = dockerfile_instructions()
    users = [a for word, a in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    # Nothing runs as root after the switch but the metadata that follows.
    last_user = max(i for i, (word, _) in enumerate(instructions) if word == "USER")
    assert not [a for word, a in instructions[last_user:] if word == "RUN"]
    for word, a in instructions:
        if word == "RUN" and "pip install" in a:
            assert "--no-cache-dir" in a, a
    # HOME is emptied of what root steps left there before the user takes over.
    env = " ".join(a for word, a in instructions if word == "ENV")
    home = re.search(r"\bHOME=(\S+)", env).group(1)
    assert any(word == "RUN" and f"find {home} -mindepth 1 -delete" in a for word, a in instructions[:last_user])
    # .dockerignore drops .git: the commit comes in as a build argument, into the environment.
    assert ".git" in (ROOT / ".dockerignore").read_text().split()
    assert "GPU_SOFTMAX_COMMIT" in dockerfile_args()
    assert ("ENV", "GPU_SOFTMAX_COMMIT=$GPU_SOFTMAX_COMMIT") in instructions
    assert re.search(r'docker build --build-arg GPU_SOFTMAX_COMMIT="\$\(git rev-parse HEAD\)" .*-t ', container_doc())


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[\w.+]+", version), f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_one_constraints_file_pins_every_dependency_for_dockerfile_and_docs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = constraint_pins()
    wanted = list(project["project"]["dependencies"]) + list(project["build-system"]["requires"])
    for extra in ("cuda12x", "cuda13x", "bench", "torch"):
        wanted += project["project"]["optional-dependencies"][extra]
    for req in wanted:
        name = re.sub(r"[-_.]+", "-", re.match(r"[\w.\-]+", req).group(0)).lower()
        assert name in pins, f"constraints.txt does not pin {name} ({req})"
    # torch is README's test pin, whichever build (+cu126 or the package index's) the index supplies.
    readme_torch = re.search(r'"torch==([\w.]+)"', readme_commands()[1]).group(1)
    assert pins["torch"].split("+")[0] == readme_torch
    # The Dockerfile hands the file to every pip call there; docs/container.md uses the same file.
    instructions = dockerfile_instructions()
    env = " ".join(a for word, a in instructions if word == "ENV")
    path = re.search(r"\bPIP_CONSTRAINT=(\S+)", env).group(1)
    assert ("COPY", f"constraints.txt {path}") in instructions
    first_pip = next(i for i, (word, a) in enumerate(instructions) if word == "RUN" and "pip install" in a)
    assert instructions.index(("COPY", f"constraints.txt {path}")) < first_pip
    for word, a in instructions:  # the versions live in that file only
        if word == "RUN" and "pip install" in a:
            pip_line = a.split("&&")[0]
            assert not re.search(r"(==|>=|<=|~=)\s*\d", pip_line), pip_line
    assert "-c constraints.txt" in container_doc() and "[constraints.txt](../constraints.txt)" in container_doc()


def container_doc() -> str:
    return (ROOT / "docs" / "container.md").read_text()


def test_container_doc_matches_dockerfile():
    section = container_doc()
    build = re.search(r"^docker build (?:--build-arg .*)?-t (\S+) \.$", section, re.MULTILINE)
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
    assert re.search(rf"^#\s+docker build (--build-arg .*)?-t {tag} \.$", docker, re.MULTILINE)
    for run in re.findall(r"^#\s+(docker run .*)$", docker, re.MULTILINE):
        assert ("-v " not in run) or '--user "$(id -u):$(id -g)"' in run, run
    # README links the container page.
    assert "(docs/container.md)" in (ROOT / "README.md").read_text()


def test_dockerfile_writable_paths_and_no_unused_tools():
    docker = (ROOT / "Dockerfile").read_text()
    apt = re.search(r"apt-get install ([^\n\\]*)", docker).group(1).split()
    assert "git" not in apt
    env = dict(re.findall(r"\b(HOME|CUPY_CACHE_DIR)=(\S+)", docker))
    # Writable whatever --user the container runs as: the mounted results or /tmp.
    assert env.get("HOME", "").startswith("/tmp"), env
    assert env.get("CUPY_CACHE_DIR", "").startswith(("/results/", "/tmp")), env
    assert "install -d -m 1777 /results" in docker  # the default volume, for the image's own user too


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
    # gpu-softmax is on no package index: `pip install "gpu-softmax[...]"` cannot work; ".[...]" does,
    # editable (-e) after the first command, so that no later step undoes README's editable test install.
    texts = [ROOT / "README.md", ROOT / "Dockerfile", *(ROOT / "docs").glob("*.md"), *(ROOT / "gpu_softmax").rglob("*.py"),
             ROOT / "tests" / "conftest.py"]
    for path in texts:
        assert "gpu-softmax[" not in path.read_text(), f"{path.relative_to(ROOT)} names gpu-softmax[...]"
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "torch.md").read_text()
    assert 'pip install -e ".[cuda12x,torch]"' in docs


def test_readme_install_steps_compose_top_to_bottom():
    # Once README has installed the package editable (the test command), no later line may
    # replace that with a copy: every later install of the checkout is editable too.
    text = (ROOT / "README.md").read_text()
    installs = re.findall(r"pip install (-e )?\"\.\[([\w,]+)\]\"", text)
    assert len(installs) >= 4, installs  # main job, tests, torch, examples
    first_editable = next(i for i, (e, _) in enumerate(installs) if e)
    assert first_editable == 1  # the test command
    assert all(e for e, _ in installs[first_editable:]), installs
    for doc in ("install.md", "torch.md"):
        for e, extras in re.findall(r"pip install (-e )?\"\.\[([\w,]+)\]\"", (ROOT / "docs" / doc).read_text()):
            assert e, f"docs/{doc} installs .[{extras}] without -e"


def test_cuda_requirements_are_stated_where_the_user_chooses():
    from gpu_softmax._cuda import compile_check, info

    readme = (ROOT / "README.md").read_text()
    install = (ROOT / "docs" / "install.md").read_text()
    # torch==2.13.0 from the package index is a CUDA 13 build: README says which driver that needs.
    assert "That wheel is a CUDA 13 build: its GPU needs a CUDA 13 driver (R580 or newer)" in " ".join(readme.split())
    assert "(docs/install.md)" in readme
    assert info.DRIVER_NEEDS == {12: "R525 or newer", 13: "R580 or newer"}
    for needs in info.DRIVER_NEEDS.values():
        assert needs.split()[0] in install
    # Both recipes, complete: a CUDA 12 torch for a CUDA 12 driver; cu130 torch with cupy-cuda13x.
    cuda12 = install[install.index("## A host with a CUDA 12 driver"):install.index("## The CUDA 13 stack")]
    assert info.TORCH_CUDA12.removeprefix("pip install ") in cuda12
    assert re.search(r'"torch==[\w.]+"', readme_commands()[1]).group(0) in info.TORCH_CUDA12  # README's pin
    assert 'pip install -e ".[cuda12x,torch,bench,test]"' in cuda12 and "pytest" in cuda12
    cuda13 = install[install.index("## The CUDA 13 stack"):]
    assert 'pip install -e ".[cuda13x,torch,bench,test]"' in cuda13 and "uninstall -y cupy-cuda12x" in cuda13
    # The supported architectures, as compile-check states them.
    assert "sm_80 to sm_90" in compile_check.SUPPORTED and "sm_80 to sm_90" in readme
    assert "sm_80 to sm_90" in install and "sm_70/sm_75" in install and "sm_100" in install


def test_torch_bridge_on_cpu_is_said_to_be_slow_where_the_user_chooses():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## PyTorch"):readme.index("```python", readme.index("## PyTorch"))]
    torch_doc = (ROOT / "docs" / "torch.md").read_text()
    intro = torch_doc[:torch_doc.index("```python")]
    for text in (" ".join(section.split()), " ".join(intro.split())):
        assert "float64" in text and "slower than `F.cross_entropy`" in text, text
    # The snippet's comment says what runs for the tensors it makes (CPU ones).
    (block,) = [b for b in readme_python_blocks() if "gst.cross_entropy(" in b]
    for line in block.splitlines():
        if "torch.randn(" in line and ".cuda()" not in line.split("#")[0] and "device=" not in line:
            assert "CUDA tensors" not in line, line


def test_api_table_lists_every_public_function():
    table = (ROOT / "docs" / "api.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)\(", table, re.MULTILINE))
    functions = {n for n in gpu_softmax.__all__ if callable(getattr(gpu_softmax, n))}
    assert "linear_cross_entropy_with_grad" in functions
    assert functions <= rows, functions - rows
