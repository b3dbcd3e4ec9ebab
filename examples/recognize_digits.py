"""Recognise handwritten digits with a small CNN: (conv2d - batch_norm - relu - pool2d) twice, then fc,
trained with Adam and global-norm gradient clipping on scikit-learn's bundled 8x8 digits.

    python examples/recognize_digits.py [--epochs 15] [--batch 32] [--clip 1.0] [--seed 0]

The 1797 images are split once (seeded) into 1497 for training and 300 held out. Accuracy is
measured on the held-out images with the inference clone of the program (`clone(for_test=True)`),
where batch_norm normalises with its moving statistics.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fluidlite as fl
from fluidlite import layers

HELD_OUT = 300


def split(seed):
    """((train images, labels), (held-out images, labels)) from one seeded permutation of the digits."""
    images, labels = fl.datasets.digits()
    order = np.random.default_rng(seed).permutation(len(images))
    test, train = order[:HELD_OUT], order[HELD_OUT:]
    return (images[train], labels[train]), (images[test], labels[test])


def build(clip, lr=0.01, filters=(16, 32)):
    """(main, test program, startup, loss, logits) of the CNN; `clip` is the global-norm bound."""
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        img = layers.data("img", [1, 8, 8])
        label = layers.data("label", [1], dtype="int64")
        h = img
        for f in filters:  # 8x8 -> 4x4 -> 2x2
            h = layers.conv2d(h, num_filters=f, filter_size=3, padding=1, bias_attr=False)
            h = layers.batch_norm(h, act="relu")
            h = layers.pool2d(h, pool_size=2, pool_stride=2)
        logits = layers.fc(h, size=10)
        loss = layers.mean(layers.softmax_with_cross_entropy(logits, label))
        test = main.clone(for_test=True)
        fl.optimizer.Adam(lr).minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(clip))
    return main, test, startup, loss, logits


def train(epochs=15, batch=32, clip=1.0, seed=0, verbose=True):
    """Trains; returns {'losses': mean loss per epoch, 'accuracy': held-out accuracy, 'ms_per_step': ...}."""
    (xs, ys), (tx, ty) = split(seed)
    main, test, startup, loss, logits = build(clip)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    reader = fl.reader.batches(xs, ys, batch_size=batch, shuffle=True, seed=seed, drop_last=True)
    losses, steps, t0 = [], 0, time.perf_counter()
    for epoch in range(epochs):
        epoch_losses = []
        for bx, by in reader():
            epoch_losses.append(exe.run(main, feed={"img": bx, "label": by}, fetch_list=[loss], scope=scope)[0][0])
            steps += 1
        losses.append(float(np.mean(epoch_losses)))
        if verbose:
            print(f"epoch {epoch + 1:2d}: mean train loss {losses[-1]:.4f}")
    ms_per_step = 1e3 * (time.perf_counter() - t0) / steps
    out, = exe.run(test, feed={"img": tx, "label": ty}, fetch_list=[logits], scope=scope)
    accuracy = float(np.mean(out.argmax(axis=1) == ty[:, 0]))
    return {"losses": losses, "accuracy": accuracy, "ms_per_step": ms_per_step, "steps": steps}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clip", type=float, default=1.0, help="global-norm clip bound")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    r = train(args.epochs, args.batch, args.clip, args.seed)
    print(f"held-out accuracy {r['accuracy']:.4f} on {HELD_OUT} images; {r['steps']} steps, "
          f"{r['ms_per_step']:.2f} ms per step (batch {args.batch})")


if __name__ == "__main__":
    main()
