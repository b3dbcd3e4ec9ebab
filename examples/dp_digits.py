"""Train a digit classifier with DP-SGD and report its held-out accuracy at a stated (epsilon, delta),
next to the same model trained without privacy.

    python examples/dp_digits.py [--epochs 30] [--noise 1.1] [--clip 1.0] [--batch 64]

Data: fluidlite.datasets.digits() (scikit-learn's 8x8 digits) when available, else a synthetic
10-class set of the same size. Batches are fixed-size slices of a shuffled epoch; the accountant
assumes Poisson sampling with rate batch / n_train, the usual approximation (stated in the output).
"""
from __future__ import annotations

import argparse

import numpy as np

import fluidlite as fl
from fluidlite import layers

DELTA = 1e-5


def load(seed=0):
    """(x_train, y_train, x_test, y_test, source): images flattened to 64 features."""
    try:
        from fluidlite.datasets import digits

        x, y = digits()
        source = "fluidlite.datasets.digits()"
    except (ImportError, AttributeError):
        rng = np.random.default_rng(seed)
        centers = rng.uniform(0, 1, (10, 64))
        y = rng.integers(0, 10, (1797, 1))
        x = np.clip(centers[y[:, 0]] + 0.35 * rng.standard_normal((1797, 64)), 0, 1)
        source = "a synthetic 10-class set (fluidlite.datasets is not available)"
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    y = np.asarray(y, np.int64).reshape(-1, 1)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = len(x) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test], source


def train(data, private, epochs, batch, clip, noise, lr, seed=0):
    """Test accuracy of an MLP 64-128-10 after `epochs` of SGD (DP-SGD when `private`)."""
    x_train, y_train, x_test, y_test, _ = data
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = seed + 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [64])
        y = layers.data("y", [1], dtype="int64")
        logits = layers.fc(layers.fc(x, 128, act="relu"), 10)
        loss = layers.mean(layers.softmax_with_cross_entropy(logits, y))
        test_program = main.clone(for_test=True)
        grad_clip = fl.clip.GradientClipPerExample(clip, noise_multiplier=noise, seed=seed) if private else None
        fl.optimizer.Momentum(lr, 0.9).minimize(loss, grad_clip=grad_clip)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(seed)
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for k in range(0, len(order) - batch + 1, batch):
            idx = order[k:k + batch]
            exe.run(main, feed={"x": x_train[idx], "y": y_train[idx]}, fetch_list=[loss], scope=scope)
            steps += 1
    out, = exe.run(test_program, feed={"x": x_test, "y": y_test}, fetch_list=[logits], scope=scope)
    return float((out.argmax(axis=1) == y_test[:, 0]).mean()), steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--noise", type=float, default=1.1)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)
    data = load()
    print(f"data: {data[4]}; {len(data[0])} train, {len(data[2])} test examples")
    plain, _ = train(data, False, args.epochs, args.batch, args.clip, args.noise, args.lr)
    private, steps = train(data, True, args.epochs, args.batch, args.clip, args.noise, args.lr)
    rate = args.batch / len(data[0])
    eps = fl.privacy.epsilon(args.noise, rate, steps, DELTA)
    print(f"non-private:  test accuracy {plain:.3f}")
    print(f"DP-SGD:       test accuracy {private:.3f} at (epsilon={eps:.2f}, delta={DELTA:g}) "
          f"[clip {args.clip}, noise {args.noise}, {steps} steps, sampling rate {rate:.3f}; the accountant "
          "assumes Poisson sampling, batches here are shuffled fixed-size slices]")
    return {"plain": plain, "private": private, "epsilon": eps, "delta": DELTA, "steps": steps}


if __name__ == "__main__":
    main()
