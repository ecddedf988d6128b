# gpu_softmax benchmark container: `gpu-softmax bench` against PyTorch (eager and
# torch.compile) and cupyx, writing results.json, results.md and plots to /results.
#   docker build --build-arg GPU_SOFTMAX_COMMIT="$(git rev-parse HEAD)" -t gpu-softmax .
#   mkdir -p results
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD/results:/results" gpu-softmax
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD/results:/results" gpu-softmax bench --op softmax --dtype float16,bfloat16 --out /results
#   docker run --rm --gpus all gpu-softmax info
#   docker run --rm --gpus all gpu-softmax check
# --user: the files written to results/ belong to you, not to root (docs/container.md).
#
# Two CUDA stacks, chosen by build arguments (docs/container.md has both build lines):
# - the default, CUDA 12: CuPy for CUDA 12 (the cuda12x extra, as README.md's first command)
#   and torch's CUDA 12.6 build from PyTorch's index. Host driver: CUDA 12.6 or newer
#   (R560+, which every CUDA 13 driver, R580+, is), as the base image requires 12.6.
# - CUDA 13: CUDA_BASE=nvidia/cuda:13.0.0-runtime-ubuntu24.04 CUPY_EXTRA=cuda13x TORCH_INDEX=
#   (torch's wheel on the package index, a CUDA 13 build). Host driver: CUDA 13 (R580+).
# The versions of every Python package: constraints.txt (torch's is README's test pin).
ARG CUDA_BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
FROM ${CUDA_BASE}
ARG CUPY_EXTRA=cuda12x
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126

# gcc and the Python headers: Triton (torch.compile, Liger-Kernel) builds a small launcher
# module with them at run time; without them torch.compile rows are skipped with a note.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
# Every path the container writes is writable by any user (docker run --user): the CuPy
# cache goes to the mounted /results, the rest (and HOME, for libraries that cache there) to
# /tmp, which the build leaves empty (pip keeps no cache), so no root-owned cache sits there.
# PIP_CONSTRAINT rather than -c: it also binds the isolated build of the package (hatchling).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp \
    CUPY_CACHE_DIR=/results/.cupy-cache MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor TRITON_CACHE_DIR=/tmp/triton \
    PIP_CONSTRAINT=/opt/constraints.txt PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /opt/constraints.txt

# The torch baseline (eager and torch.compile), in its own layer before the sources so a
# source change does not reinstall it. With TORCH_INDEX set, pip takes that index's build
# (2.13.0+cu126 sorts above the package index's plain 2.13.0, a CUDA 13 build); the check
# after it fails the build if torch's CUDA is not the stack's. Liger-Kernel and QuACK are
# timed when present: pin them in constraints.txt and add them to this pip line.
RUN python -m pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} torch \
 && cuda_major="${CUPY_EXTRA#cuda}" \
 && python -c "import sys, torch; v = torch.version.cuda or 'none (a CPU build)'; \
sys.exit(None if v.split('.')[0] == sys.argv[1] else f'torch {torch.__version__}: CUDA {v}, not {sys.argv[1]}')" \
    "${cuda_major%x}"

WORKDIR /src
COPY . /src
RUN python -m pip install --no-cache-dir ".[${CUPY_EXTRA},bench]"

# Not root: a user of its own, whose results folder (the default volume) it can write. HOME
# (/tmp) is emptied of whatever a root build step left there, so every cache in it is the user's.
RUN groupadd --gid 10001 gpu-softmax \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp gpu-softmax \
 && install -d -m 1777 /results \
 && find /tmp -mindepth 1 -delete
USER 10001:10001

# .dockerignore drops .git, so the commit comes in as a build argument; the benchmark
# records it in results.json. Last, so a new commit rebuilds no earlier layer.
ARG GPU_SOFTMAX_COMMIT=
ENV GPU_SOFTMAX_COMMIT=$GPU_SOFTMAX_COMMIT

VOLUME /results
ENTRYPOINT ["gpu-softmax"]
CMD ["bench", "--out", "/results"]
