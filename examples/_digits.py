"""What both digits examples share: the train/test split of scikit-learn's digits and the command line.

Not an example itself: ``train_digits_cupy.py`` and ``train_digits_torch.py`` import it, and Python finds it
beside them because a script's own folder leads ``sys.path`` whatever the working directory.
"""

from __future__ import annotations

import argparse

import numpy as np


def load_digits_split(seed: int):
    """(X_train, y_train, X_test, y_test) as float32 / int64 NumPy arrays; a fifth held out, standardised on the rest."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    X, y = X[order].astype(np.float32), y[order].astype(np.int64)
    n_test = len(y) // 5
    X_train, X_test = X[n_test:], X[:n_test]
    # The +1e-6 keeps the always-blank corner pixels (std 0) from dividing by zero.
    mean, std = X_train.mean(axis=0), X_train.std(axis=0) + 1e-6
    return (X_train - mean) / std, y[n_test:], (X_test - mean) / std, y[:n_test]


def parse_training_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    """The training options both examples take, with the same defaults so their runs compare."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)
