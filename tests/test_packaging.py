"""The built wheel and sdist carry the kernel sources and the LICENSE; the installed package finds them."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = out.glob("gpu_softmax-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_contains_every_kernel_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(p.name for p in (ROOT / "cuda_src").iterdir() if p.suffix in (".cu", ".cuh"))
    assert "common.cuh" in sources
    for s in sources:
        assert f"gpu_softmax/cuda_src/{s}" in names, f"{s} missing from {wheel.name}"


def assert_is_the_license(text: str, where: str) -> None:
    assert text == (ROOT / "LICENSE").read_text(), f"{where} carries a LICENSE other than the checkout's"
    assert text.startswith("MIT License") and "Copyright (c) 2026 the gpu_softmax developers" in text


@pytest.mark.slow
def test_wheel_carries_the_mit_license(wheel):
    archive = zipfile.ZipFile(wheel)
    (path,) = [n for n in archive.namelist() if re.fullmatch(r"gpu_softmax-[\w.]+\.dist-info/licenses/LICENSE", n)]
    assert_is_the_license(archive.read(path).decode(), wheel.name)
    metadata = archive.read(path.replace("licenses/LICENSE", "METADATA")).decode()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata


@pytest.mark.slow
def test_sdist_carries_the_license_and_the_container_files(tmp_path):
    pytest.importorskip("build")
    p = subprocess.run([sys.executable, "-m", "build", "--sdist", "-o", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    (sdist,) = tmp_path.glob("gpu_softmax-*.tar.gz")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        names = set(archive.getnames())
        assert_is_the_license(archive.extractfile(f"{top}/LICENSE").read().decode(), sdist.name)
    for name in ("Dockerfile", ".dockerignore", "constraints.txt", "README.md", "cuda_src/common.cuh"):
        assert f"{top}/{name}" in names, f"{name} missing from {sdist.name}"


@pytest.mark.slow
def test_wheel_installs_in_fresh_venv_and_finds_kernels(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    p = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    probe = (
        "import gpu_softmax, sys, numpy as np\n"
        "from gpu_softmax._cuda import loader\n"
        "d = loader.cuda_src_dir()\n"
        "assert 'site-packages' in str(d), d\n"
        "print(d)\n"
        "print(','.join(loader.families()))\n"
        "for f in loader.families(): loader.module_source(f)\n"
        "assert 'torch' not in sys.modules and 'cupy' not in sys.modules\n"
        "print(float(gpu_softmax.softmax(np.array([0.0, 0.0]))[0]))\n"
    )
    # Run from an empty directory so the source checkout is not on sys.path.
    p = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.split("\n")
    assert Path(lines[0], "common.cuh").is_file()
    expected = sorted(q.stem for q in (ROOT / "cuda_src").glob("*.cu"))
    assert lines[1] == ",".join(expected)
    assert lines[2] == "0.5"
    # The console script is installed and runs without a GPU.
    p = subprocess.run([str(env_dir / "bin" / "gpu-softmax"), "info"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "backend:" in p.stdout


def test_import_does_not_pull_in_torch_or_cupy():
    code = "import sys, gpu_softmax, gpu_softmax.reference; assert 'torch' not in sys.modules; assert 'cupy' not in sys.modules"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
