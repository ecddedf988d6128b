# gpu_softmax benchmark container.
#   docker build -t gpu-softmax .
#   docker run --rm --gpus all -v "$PWD/results:/results" gpu-softmax
#   docker run --rm --gpus all -v "$PWD/results:/results" gpu-softmax bench --op softmax --dtype float16 --out /results
# The install step is README.md's first command (tests/test_docs.py keeps them in step).
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv git \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=/results/.cupy-cache

WORKDIR /src
COPY . /src
RUN python -m pip install ".[cuda12x,bench]"

VOLUME /results
ENTRYPOINT ["gpu-softmax"]
CMD ["bench", "--out", "/results"]
