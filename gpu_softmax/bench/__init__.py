"""Benchmark runner shared by `gpu-softmax bench` and benchmarks/device_check.py.

Two times per row, both from CUDA events on the current stream, inputs rotated among
buffers that together exceed twice the L2 size, fresh random data (never zeros):

- **call time** (`call_ms`): events between consecutive calls of a back-to-back loop,
  so host work (argument checks, allocation, autograd, launch) counts whenever the GPU
  waits for it: what a user's eager loop sees.
- **kernel time** (`ms`): the same loop queued behind a spin kernel that keeps the GPU
  busy until the host has queued every call, so the events time the device work alone.
  `kernel_covered` says the spin outlasted the queuing (false: a call synchronised
  with the host, and the kernel time may include host gaps).

GB/s, % of copy bandwidth, speed-ups and the goals use kernel time. Bandwidth counts
the fewest bytes each op must move (`op_bytes`) against the device-to-device copy
(bytes read + written) and read-only bandwidths measured in the same run. A
host-overhead row per op (`kind: "overhead"`, a tiny input) gives each
implementation's call time minus that of an empty kernel launch.

Our results are checked on a sample of rows (first, last and random ones) of the
timed input against the float64 reference at the tolerances of the tests
(`selfcheck.compare`); the check never reads the whole input back to the host.

Implementations per (op, dtype, shape): ours (`gpu_softmax`, CuPy arrays), ours
through the torch bridge (`gpu_softmax.torch`, for cross_entropy_with_grad: forward
and `.backward()`, the training path), and every baseline present: PyTorch eager,
`torch.compile` (compiled once per op with dynamic shapes), `cupyx`, Liger-Kernel
and QuACK. One that is missing, lacks the op or raises is skipped with a note.
`bfloat16` rows are torch tensors (ours through the bridge). Peak device memory is
recorded for every implementation of the training rows.

Time: our kernels are compiled with NVRTC in background threads while the main thread
imports torch, measures the bandwidth and compiles torch.compile's graphs (one per op
and dtype, dynamic shapes, on a tiny input); compile and first-call JIT times are
reported apart (`compile_seconds`), and a time budget stops starting new cases once
spent (their rows say so).

Without a GPU the rows time the NumPy reference on small shapes (impl
"NumPy reference"), with the host clock.

Where each piece lives:

- `cases`: ops, dtypes, implementation names, shapes and plans, the `Row` record, `op_bytes`
- `goals`: the kernel issues' performance goals and `evaluate_goals`
- `inputs`: the timed arguments (NumPy, CuPy, torch) and rows read back to the host
- `baselines`: one `Adapter` per implementation, `implementations()` for a case
- `timing`: CUDA events, the spin and empty kernels, warm-up, medians, bandwidth, peak memory
- `warmup`: NVRTC in background threads, torch.compile's graphs, the launch plan of a case
- `check`: the sampled accuracy check (through `selfcheck.compare`)
- `identity`: installed versions, commit, device
- `runner`: `run()`, the loop over cases
- `estimate`: the dry run's cost estimate
- `report` / `plot`: table, markdown, JSON and files; the plots
- `vocab_parallel`: per-rank timing of the vocabulary-parallel loss
"""
