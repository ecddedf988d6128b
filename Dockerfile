# gpu_softmax benchmark container: `gpu-softmax bench` against PyTorch (eager and
# torch.compile) and cupyx, writing results.json, results.md and plots to /results.
#   docker build -t gpu-softmax .
#   mkdir -p results
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD/results:/results" gpu-softmax
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD/results:/results" gpu-softmax bench --op softmax --dtype float16,bfloat16 --out /results
#   docker run --rm --gpus all gpu-softmax info
#   docker run --rm --gpus all gpu-softmax check
# --user: the files written to results/ belong to you, not to root (docs/container.md).
# The package install step is README.md's first command and the torch pin its test command's
# (tests/test_docs.py keeps them in step).
# Needs a host driver for CUDA 12 (the runtime below; CuPy and torch bring their own libraries).
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

# gcc and the Python headers: Triton (torch.compile, Liger-Kernel) builds a small launcher
# module with them at run time; without them torch.compile rows are skipped with a note.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
# Every path the container writes is writable by any user (docker run --user): the CuPy
# cache goes to the mounted /results, the rest (and HOME, for libraries that cache there) to /tmp.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp \
    CUPY_CACHE_DIR=/results/.cupy-cache MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor TRITON_CACHE_DIR=/tmp/triton

# The torch baseline (eager and torch.compile), in its own layer before the sources so a
# source change does not reinstall it. Liger-Kernel and QuACK are timed when present:
# add e.g. `RUN python -m pip install liger-kernel` here.
RUN python -m pip install "torch==2.13.0"

WORKDIR /src
COPY . /src
RUN python -m pip install ".[cuda12x,bench]"

VOLUME /results
ENTRYPOINT ["gpu-softmax"]
CMD ["bench", "--out", "/results"]
