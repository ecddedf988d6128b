"""Train a small MLP on scikit-learn's digits with ``gpu_softmax.torch.cross_entropy``.

The same model as ``train_digits_cupy.py``, written with PyTorch: autograd does the
backward pass, and the loss is our fused cross entropy (forward computes the loss
and its gradient in one pass; backward only scales that gradient). On a machine
with a CUDA GPU (and CuPy) the tensors live there and our CUDA kernels run; on CPU
tensors the same functions compute through the NumPy reference (the script says so).

    python examples/train_digits_torch.py --epochs 30

The digits data set ships with scikit-learn (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import gpu_softmax.torch as gst


def pick_device() -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        try:
            import cupy  # noqa: F401

            return torch.device("cuda"), f"CUDA tensors on {torch.cuda.get_device_name()} (gpu_softmax CUDA kernels)"
        except ImportError:
            pass
    return torch.device("cpu"), "no GPU (or no CuPy): CPU tensors (gpu_softmax's NumPy reference)"


def load_digits_split(seed: int):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    X, y = X[order].astype(np.float32), y[order].astype(np.int64)
    n_test = len(y) // 5
    X_train, X_test = X[n_test:], X[:n_test]
    mean, std = X_train.mean(axis=0), X_train.std(axis=0) + 1e-6
    return (X_train - mean) / std, y[n_test:], (X_test - mean) / std, y[:n_test]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device, where = pick_device()
    print(f"computing with {where}")
    torch.manual_seed(args.seed)
    X_train, y_train, X_test, y_test = (torch.from_numpy(a).to(device) for a in load_digits_split(args.seed))
    model = torch.nn.Sequential(
        torch.nn.Linear(X_train.shape[1], args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 10)
    ).to(device)
    criterion = gst.CrossEntropyLoss(label_smoothing=args.label_smoothing, inplace_backward=True)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    losses = []
    n = len(y_train)
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(n, generator=g).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, n, args.batch_size):
            idx = order[start:start + args.batch_size]
            loss = criterion(model(X_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        losses.append(total.item() / n)  # one host read per epoch
        print(f"epoch {epoch:3d}  train loss {losses[-1]:.4f}")

    with torch.no_grad():
        accuracy = (model(X_test).argmax(dim=1) == y_test).float().mean().item()
    print(f"test accuracy {accuracy:.4f} ({len(y_test)} held-out digits)")
    return {"losses": losses, "accuracy": accuracy, "backend": where}


if __name__ == "__main__":
    main(sys.argv[1:])
