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

import sys

import torch

import gpu_softmax.torch as gst

from _digits import load_digits_split, parse_training_args  # beside this script


def pick_device() -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        try:
            import cupy  # noqa: F401

            return torch.device("cuda"), f"CUDA tensors on {torch.cuda.get_device_name()} (gpu_softmax CUDA kernels)"
        except ImportError:
            pass
    return torch.device("cpu"), "no GPU (or no CuPy): CPU tensors (gpu_softmax's NumPy reference)"


def main(argv: list[str] | None = None) -> dict:
    args = parse_training_args(__doc__.splitlines()[0], argv)

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
