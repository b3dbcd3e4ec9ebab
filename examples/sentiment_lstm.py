"""Sentiment classification with an LSTM on reviews of different lengths: embedding -> layers.lstm with
sequence_length -> fc, trained with error clipping, on a synthetic token task made in code; the trained
model is exported with save_inference_model.

    python examples/sentiment_lstm.py [--steps 400] [--seq-len 20] [--hidden 32] [--seed 0] [--export DIR]

The task: a review is 4..seq_len tokens (padded to seq_len) from a vocabulary whose first `POLAR` words
are positive, the next `POLAR` negative and the rest neutral. Its label is 1 when it holds more positive
than negative words (never a tie). The LSTM must count polarity over the valid words; padding carries
the state unchanged and gets no gradient (`sequence_length`). `error_clip` puts ErrorClipByValue on
every step's hidden state, so each d(loss)/dh_t is clipped as backward produces it
(`fl.clip.error_clip_callback`).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fluidlite as fl
from fluidlite import layers

VOCAB, POLAR, EMBED = 40, 5, 16
PAD = VOCAB  # an extra embedding row; the LSTM never reads padded steps anyway
MIN_LEN = 4


def _score(ids, lengths):
    """Positive minus negative words per review, over its valid words."""
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    return ((ids < POLAR) & valid).sum(1) - ((ids >= POLAR) & (ids < 2 * POLAR) & valid).sum(1)


def make_reviews(n, seq_len, seed):
    """(ids int64 [seq_len, n, 1] time-major and padded, lengths int64 [n], labels int64 [n, 1])."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(MIN_LEN, seq_len + 1, size=n)
    ids = rng.integers(2 * POLAR, VOCAB, size=(n, seq_len))  # neutral words
    for i in range(n):
        k = rng.integers(1, min(5, lengths[i]) + 1)  # 1..5 polar words at random valid places
        where = rng.choice(lengths[i], size=k, replace=False)
        ids[i, where] = rng.integers(0, 2 * POLAR, size=k)
    for i in np.flatnonzero(_score(ids, lengths) == 0):  # break a tie: a neutral (else a negative) word turns
        words = ids[i, :lengths[i]]
        neutral = np.flatnonzero(words >= 2 * POLAR)
        if neutral.size:
            ids[i, rng.choice(neutral)] = rng.integers(0, 2 * POLAR)
        else:  # all polar, as many positive as negative: one negative becomes positive
            ids[i, rng.choice(np.flatnonzero(words >= POLAR))] = rng.integers(0, POLAR)
    labels = (_score(ids, lengths) > 0).astype(np.int64).reshape(n, 1)
    ids[np.arange(seq_len)[None, :] >= lengths[:, None]] = PAD
    return np.ascontiguousarray(ids.T.reshape(seq_len, n, 1)), lengths.astype(np.int64), labels


def build(seq_len, hidden, clip):
    """(main, test program, startup, loss, prob): embedding, layers.lstm over the valid steps, fc on last_h."""
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        ids = fl.data("ids", [seq_len, None, 1], dtype="int64")
        lengths = fl.data("lengths", [None], dtype="int64")
        label = fl.data("label", [None, 1], dtype="int64")
        emb = layers.embedding(ids, size=[VOCAB + 1, EMBED])  # [T, B, EMBED]
        h0 = layers.fill_constant_batch_size_like(lengths, [1, -1, hidden], "float32", 0.0, output_dim_idx=1)
        _, last_h, _ = layers.lstm(emb, h0, h0, max_len=seq_len, hidden_size=hidden, sequence_length=lengths,
                                   error_clip=fl.clip.ErrorClipByValue(clip))
        logits = layers.fc(layers.squeeze(last_h, [0]), 2)  # the state after each review's last word
        prob = layers.softmax(logits)
        loss = layers.mean(layers.softmax_with_cross_entropy(logits, label))
        test = main.clone(for_test=True)
        fl.optimizer.Adam(learning_rate=0.02).minimize(loss, callback=fl.clip.error_clip_callback)
    return main, test, startup, loss, prob


def train(steps=400, seq_len=20, hidden=32, batch=64, clip=1.0, seed=0, log_every=50, verbose=True, export=None):
    """Trains, evaluates on held-out reviews and optionally exports the inference model; returns results."""
    main, test, startup, loss, prob = build(seq_len, hidden, clip)
    ids, lengths, labels = make_reviews(4096, seq_len, seed)
    test_ids, test_lengths, test_labels = make_reviews(1024, seq_len, seed + 1)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(seed)
    losses, times = [], []
    for step in range(steps):
        pick = rng.integers(0, len(labels), size=batch)
        feed = {"ids": np.ascontiguousarray(ids[:, pick]), "lengths": lengths[pick], "label": labels[pick]}
        t0 = time.perf_counter()
        (value,) = exe.run(main, feed=feed, fetch_list=[loss], scope=scope)
        times.append(time.perf_counter() - t0)
        losses.append(float(value[0]))
        if verbose and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}")
    (out,) = exe.run(test, feed={"ids": test_ids, "lengths": test_lengths}, fetch_list=[prob], scope=scope)
    accuracy = float(np.mean(out.argmax(1) == test_labels[:, 0]))
    ms = 1e3 * float(np.median(times[len(times) // 5:]))
    if export:
        fl.io.save_inference_model(export, ["ids", "lengths"], [prob], exe, main_program=test, scope=scope)
    if verbose:
        print(f"held-out accuracy {accuracy:.3f} on {len(test_labels)} reviews of {MIN_LEN}..{seq_len} words; "
              f"{ms:.2f} ms per training step (batch {batch}, hidden {hidden})"
              + (f"; inference model in {export}" if export else ""))
    return {"accuracy": accuracy, "ms_per_step": ms, "losses": losses, "test_prob": out}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--clip", type=float, default=1.0, help="error clip bound on every dL/dh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", default=None, help="directory for the inference model")
    args = parser.parse_args(argv)
    train(args.steps, args.seq_len, args.hidden, args.batch, args.clip, args.seed, export=args.export)


if __name__ == "__main__":
    main()
