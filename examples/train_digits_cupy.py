"""Train a small MLP on scikit-learn's digits with gpu_softmax's fused cross entropy.

The gradient step uses ``gpu_softmax.cross_entropy_with_grad`` directly: one call
gives the loss and d loss / d logits, and the rest of the backward pass is two
matrix products. Arrays are CuPy on a machine with a GPU (our CUDA kernels) and
NumPy otherwise (the reference implementation; the script says so).

    python examples/train_digits_cupy.py --epochs 30

The digits data set ships with scikit-learn (nothing is downloaded).
"""

from __future__ import annotations

import sys

import numpy as np

import gpu_softmax as gs

from _digits import load_digits_split, parse_training_args  # beside this script


def array_module():
    """(xp, description): CuPy when a GPU is usable, NumPy otherwise."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy, f"CuPy on GPU {cupy.cuda.Device().id} (gpu_softmax CUDA kernels)"
    except Exception:
        pass
    return np, "no GPU found: NumPy arrays on the CPU (gpu_softmax's NumPy reference)"


def main(argv: list[str] | None = None) -> dict:
    args = parse_training_args(__doc__.splitlines()[0], argv)

    xp, where = array_module()
    print(f"computing with {where}")
    X_train, y_train, X_test, y_test = (xp.asarray(a) for a in load_digits_split(args.seed))
    n_in, n_classes = X_train.shape[1], 10

    rng = np.random.default_rng(args.seed)
    W1 = xp.asarray(rng.standard_normal((n_in, args.hidden), dtype=np.float32) * np.sqrt(2.0 / n_in))
    b1 = xp.zeros(args.hidden, dtype=np.float32)
    W2 = xp.asarray(rng.standard_normal((args.hidden, n_classes), dtype=np.float32) * np.sqrt(1.0 / args.hidden))
    b2 = xp.zeros(n_classes, dtype=np.float32)

    losses = []
    n = len(y_train)
    for epoch in range(1, args.epochs + 1):
        order = xp.asarray(rng.permutation(n))
        total = 0.0
        for start in range(0, n, args.batch_size):
            idx = order[start:start + args.batch_size]
            xb, yb = X_train[idx], y_train[idx]
            pre = xb @ W1 + b1
            h = xp.maximum(pre, 0)
            logits = h @ W2 + b2
            # One pass: the mean loss and d loss / d logits. The logits are not needed
            # afterwards, so the gradient may overwrite them.
            loss, g_logits = gs.cross_entropy_with_grad(logits, yb, label_smoothing=args.label_smoothing,
                                                        inplace=True)
            g_h = (g_logits @ W2.T) * (pre > 0)
            W2 -= args.lr * (h.T @ g_logits)
            b2 -= args.lr * g_logits.sum(axis=0)
            W1 -= args.lr * (xb.T @ g_h)
            b1 -= args.lr * g_h.sum(axis=0)
            total += float(loss) * len(yb)
        losses.append(total / n)
        print(f"epoch {epoch:3d}  train loss {losses[-1]:.4f}")

    logits = xp.maximum(X_test @ W1 + b1, 0) @ W2 + b2
    accuracy = float((logits.argmax(axis=1) == y_test).mean())
    print(f"test accuracy {accuracy:.4f} ({len(y_test)} held-out digits)")
    return {"losses": losses, "accuracy": accuracy, "backend": where}


if __name__ == "__main__":
    main(sys.argv[1:])
