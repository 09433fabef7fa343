"""Train a small CNN on scikit-learn's handwritten digits, every convolution through im2colbp.

The network, all in NumPy::

    x (N, 1, 8, 8)
    -> Conv2d(1, 32, 3, padding=1)            -> ReLU   (N, 32, 8, 8)
    -> Conv2d(32, 64, 3, stride=2, padding=1) -> ReLU   (N, 64, 4, 4)
    -> flatten -> Linear(1024, 10) -> softmax cross-entropy

trained with Adam (written below, learning rate on a cosine schedule) on the
1,797 8x8 digits that ship inside scikit-learn (nothing is downloaded), with a
fixed seed and a fixed stratified 80/20 split. One progress line per epoch:
loss, accuracies, seconds.

Usage, from the venv im2colbp is installed in (the README's Quick start)::

    .venv/bin/python -m pip install scikit-learn     # or, in a checkout: ".[examples]"
    .venv/bin/python -m im2colbp.digits [--epochs 30] [--seed 0]

(``scripts/train_digits.py`` in a checkout runs the same). It takes about a
minute on two cores: 59 s measured for the 30 epochs of 1,437 images, float32,
on a 2-core Intel Xeon cloud VM shared with other jobs (0.9 to 3.6 s per
epoch); the two convolutions' forward and backward are most of it.

The pieces are importable (``train``, ``DigitsCNN``, ``Adam``, ...) so tests can
run a short version and compare one step with the same network in PyTorch.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from numpy.typing import DTypeLike

from .layer import Conv2d, no_grad

__all__ = ["load_data", "Linear", "softmax_cross_entropy", "DigitsCNN", "Adam", "train", "main"]


def install_hint() -> str:
    """How to install scikit-learn into the running interpreter, in commands that work."""
    python = sys.executable or "python3"
    return (f"this example needs scikit-learn, which im2colbp does not install: run "
            f"{python} -m pip install scikit-learn (or, in a checkout of im2colbp, "
            f"{python} -m pip install '.[examples]')")


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def load_data(seed: int = 0, dtype: DTypeLike = np.float32) -> Tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)``: images ``(N, 1, 8, 8)`` scaled to [0, 1].

    The split is stratified, 80/20, and fixed by ``seed``.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError(install_hint()) from None
    digits = load_digits()
    images = (digits.images / 16.0).astype(dtype)[:, None]  # (1797, 1, 8, 8), values 0..1
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    return x_train, y_train, x_test, y_test


# --------------------------------------------------------------------------
# the layers im2colbp does not provide
# --------------------------------------------------------------------------
class Linear:
    """``y = x @ W.T + b`` with PyTorch's layout ``W (out, in)`` and default initialisation."""

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator,
                 dtype: DTypeLike = np.float32) -> None:
        bound = 1.0 / math.sqrt(in_features)
        self.weight = rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype)
        self.bias = rng.uniform(-bound, bound, out_features).astype(dtype)
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias)
        self._x: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x @ self.weight.T + self.bias

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self.grad_weight += dy.T @ self._x  # (out, N) @ (N, in)
        self.grad_bias += dy.sum(axis=0)
        return dy @ self.weight  # (N, out) @ (out, in)

    def parameters(self) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
        yield "weight", self.weight, self.grad_weight
        yield "bias", self.bias, self.grad_bias


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> Tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(logits)`` and its gradient ``(p - onehot) / N``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -float(log_p[np.arange(n), labels].mean())
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1.0
    return loss, (grad / n).astype(logits.dtype)


# --------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------
class DigitsCNN:
    """conv -> ReLU -> conv (stride 2) -> ReLU -> linear; parameters named as in PyTorch."""

    def __init__(self, seed: int = 0, dtype: DTypeLike = np.float32, width: int = 32) -> None:
        rng = np.random.default_rng(seed)
        self.conv1 = Conv2d(1, width, 3, padding=1, dtype=dtype, rng=rng)
        self.conv2 = Conv2d(width, 2 * width, 3, stride=2, padding=1, dtype=dtype, rng=rng)
        self.fc = Linear(2 * width * 4 * 4, 10, rng, dtype)
        self._masks: List[np.ndarray] = []
        self._shape: Tuple[int, ...] = ()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, 10)`` for images ``(N, 1, 8, 8)``; keeps what backward needs."""
        h1 = self.conv1(x)  # (N, 32, 8, 8)
        mask1 = h1 > 0
        h2 = self.conv2(h1 * mask1)  # (N, 64, 4, 4)
        mask2 = h2 > 0
        self._masks = [mask1, mask2]
        self._shape = h2.shape
        return self.fc.forward((h2 * mask2).reshape(len(x), -1))

    def backward(self, dlogits: np.ndarray) -> None:
        """Accumulate every parameter gradient from ``dlogits = dL/dlogits``."""
        mask1, mask2 = self._masks
        dh2 = self.fc.backward(dlogits).reshape(self._shape) * mask2
        dh1 = self.conv2.backward(dh2) * mask1
        self.conv1.backward(dh1)  # dx of the images is not needed, but cheap (C_in = 1)

    def loss_and_backward(self, x: np.ndarray, labels: np.ndarray) -> Tuple[float, np.ndarray]:
        """Zero the gradients, run forward and backward; return ``(loss, logits)``."""
        self.zero_grad()
        logits = self.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, labels)
        self.backward(dlogits)
        return loss, logits

    def parameters(self) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
        """``(name, value, grad)``; names as ``state_dict`` keys of the same torch module."""
        for prefix, layer in (("conv1", self.conv1), ("conv2", self.conv2), ("fc", self.fc)):
            for name, value, grad in layer.parameters():
                yield f"{prefix}.{name}", value, grad

    def state_dict(self) -> Dict[str, np.ndarray]:
        return {name: value.copy() for name, value, _ in self.parameters()}

    def zero_grad(self) -> None:
        for _, _, grad in self.parameters():
            grad[...] = 0

    def predict(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Class labels ``(N,)``; the layers keep no context (``no_grad``)."""
        with no_grad():
            return np.concatenate([self.forward(x[i:i + batch_size]).argmax(axis=1)
                                   for i in range(0, len(x), batch_size)])


class Adam:
    """Adam (Kingma & Ba), the update of ``torch.optim.Adam`` with default arguments.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``, in place.
    """

    def __init__(self, parameters: List[Tuple[str, np.ndarray, np.ndarray]], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.parameters = parameters
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = [np.zeros_like(value) for _, value, _ in parameters]
        self.v = [np.zeros_like(value) for _, value, _ in parameters]
        self.t = 0

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for (_, value, grad), m, v in zip(self.parameters, self.m, self.v):
            m *= b1
            m += (1 - b1) * grad
            v *= b2
            v += (1 - b2) * grad * grad
            value -= (self.lr / correction1) * m / (np.sqrt(v / correction2) + self.eps)


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
def train(
    epochs: int = 30,
    seed: int = 0,
    *,
    batch_size: int = 32,
    lr: float = 3e-3,
    train_limit: Optional[int] = None,
    log: Optional[Callable[[str], None]] = print,
) -> Dict[str, Any]:
    """Train :class:`DigitsCNN`; return the model, per-epoch history, test accuracy and time.

    The learning rate follows a cosine from ``lr`` (first epoch) towards 0.

    ``train_limit`` keeps only the first samples of the training split (for
    quick tests). ``log`` receives one progress line per epoch (None: silent).
    """
    x_train, y_train, x_test, y_test = load_data(seed)
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    model = DigitsCNN(seed)
    optimiser = Adam(list(model.parameters()), lr=lr)
    order_rng = np.random.default_rng(seed + 1)
    history = []
    start = time.perf_counter()
    if log:
        log(f"digits: {len(x_train)} train / {len(x_test)} test images 8x8, seed {seed}")
        log("conv(1->32) relu conv(32->64, stride 2) relu linear(1024->10); "
            f"Adam, lr {lr:g} on a cosine, batch {batch_size}")
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        optimiser.lr = lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        order = order_rng.permutation(len(x_train))
        total_loss, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            loss, logits = model.loss_and_backward(x_train[batch], y_train[batch])
            optimiser.step()
            total_loss += loss * len(batch)
            correct += int((logits.argmax(axis=1) == y_train[batch]).sum())
        test_accuracy = float((model.predict(x_test) == y_test).mean())
        record = dict(epoch=epoch, loss=total_loss / len(x_train),
                      train_accuracy=correct / len(x_train), test_accuracy=test_accuracy,
                      seconds=time.perf_counter() - epoch_start)
        history.append(record)
        if log:
            log(f"epoch {epoch:2d}/{epochs}  loss {record['loss']:.4f}  "
                f"train acc {record['train_accuracy']:6.2%}  test acc {test_accuracy:6.2%}  "
                f"{record['seconds']:.2f} s")
    seconds = time.perf_counter() - start
    final = history[-1]["test_accuracy"] if history else float("nan")
    if log:
        log(f"test accuracy {final:.2%} after {epochs} epochs in {seconds:.1f} s")
    return dict(model=model, history=history, test_accuracy=final, seconds=seconds)


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``--epochs`` / ``--seed``, train, print the progress; 1 without scikit-learn."""
    parser = argparse.ArgumentParser(
        prog="python -m im2colbp.digits",
        description="Train a small CNN on scikit-learn's 8x8 digits with im2colbp layers "
        "(about a minute on two cores).",
        epilog="example: .venv/bin/python -m im2colbp.digits --epochs 30 --seed 0",
    )
    parser.add_argument("--epochs", type=int, default=30, help="passes over the data (30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init, order (0)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be positive, got {args.epochs}")
    try:
        train(args.epochs, args.seed)
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
