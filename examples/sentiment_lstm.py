"""Sentiment classification with an LSTM: embedding -> StaticRNN with an LSTM unit -> fc, trained with
error clipping, on a synthetic token task made in code.

    python examples/sentiment_lstm.py [--steps 400] [--seq-len 20] [--hidden 32] [--seed 0]

The task: a "review" is `seq_len` tokens from a vocabulary whose first `POLAR` words are positive,
the next `POLAR` negative and the rest neutral. Its label is 1 when it holds more positive than
negative words (never a tie). The LSTM must count polarity over the whole sequence: a bag of the last
few words is not enough. Every hidden state carries `ErrorClipByValue`, so each d(loss)/dh is
clipped to [-clip, clip] as backward produces it (`fl.clip.error_clip_callback`).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fluidlite as fl
from fluidlite import layers

VOCAB, POLAR, EMBED = 40, 5, 16


def _score(ids):
    """Positive minus negative words per row of ids [n, seq_len]."""
    return (ids < POLAR).sum(1) - ((ids >= POLAR) & (ids < 2 * POLAR)).sum(1)


def make_reviews(n, seq_len, seed):
    """(ids int64 [seq_len, n, 1] time-major, labels int64 [n, 1])."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2 * POLAR, VOCAB, size=(n, seq_len))  # neutral words
    for i in range(n):
        k = rng.integers(1, 6)  # 1..5 polar words per review, at random places
        where = rng.choice(seq_len, size=k, replace=False)
        ids[i, where] = rng.integers(0, 2 * POLAR, size=k)
    for i in np.flatnonzero(_score(ids) == 0):  # break a tie: one neutral word becomes polar
        ids[i, rng.choice(np.flatnonzero(ids[i] >= 2 * POLAR))] = rng.integers(0, 2 * POLAR)
    score = _score(ids)
    labels = (score > 0).astype(np.int64).reshape(n, 1)
    return np.ascontiguousarray(ids.T.reshape(seq_len, n, 1)), labels


def build(seq_len, hidden, clip):
    """(main, test program, startup, names): embedding, StaticRNN(lstm_unit), fc on the last hidden state."""
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        ids = layers.data("ids", [seq_len, -1, 1], dtype="int64", append_batch_size=False)
        label = layers.data("label", [1], dtype="int64")
        emb = layers.embedding(ids, size=[VOCAB, EMBED])  # [T, B, EMBED]
        rnn = layers.StaticRNN()
        with rnn.step():
            x_t = rnn.step_input(emb)
            h_prev = rnn.memory(shape=[-1, hidden], batch_ref=x_t)
            c_prev = rnn.memory(shape=[-1, hidden], batch_ref=x_t)
            h, c = layers.lstm_unit(x_t, h_prev, c_prev)
            h.error_clip = fl.clip.ErrorClipByValue(clip)  # every unrolled step's dL/dh in [-clip, clip]
            rnn.update_memory(h_prev, h)
            rnn.update_memory(c_prev, c)
        last = rnn.step_var(h)  # the hidden state after the last word, [B, hidden]
        logits = layers.fc(last, 2)
        loss = layers.mean(layers.softmax_with_cross_entropy(logits, label))
        test = main.clone(for_test=True)
        fl.optimizer.Adam(learning_rate=0.02).minimize(loss, callback=fl.clip.error_clip_callback)
    return main, test, startup, loss, logits


def train(steps=400, seq_len=20, hidden=32, batch=64, clip=1.0, seed=0, log_every=50, verbose=True):
    """Trains and evaluates on held-out reviews; returns a dict of results."""
    main, test, startup, loss, logits = build(seq_len, hidden, clip)
    ids, labels = make_reviews(4096, seq_len, seed)
    test_ids, test_labels = make_reviews(1024, seq_len, seed + 1)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(seed)
    losses, times = [], []
    for step in range(steps):
        pick = rng.integers(0, len(labels), size=batch)
        feed = {"ids": np.ascontiguousarray(ids[:, pick]), "label": labels[pick]}
        t0 = time.perf_counter()
        (value,) = exe.run(main, feed=feed, fetch_list=[loss], scope=scope)
        times.append(time.perf_counter() - t0)
        losses.append(float(value[0]))
        if verbose and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}")
    (out,) = exe.run(test, feed={"ids": test_ids, "label": test_labels}, fetch_list=[logits], scope=scope)
    accuracy = float(np.mean(out.argmax(1) == test_labels[:, 0]))
    ms = 1e3 * float(np.median(times[len(times) // 5:]))
    if verbose:
        print(f"held-out accuracy {accuracy:.3f} on {len(test_labels)} reviews; {ms:.2f} ms per training step "
              f"(batch {batch}, {seq_len} steps, hidden {hidden})")
    return {"accuracy": accuracy, "ms_per_step": ms, "losses": losses}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--clip", type=float, default=1.0, help="error clip bound on every dL/dh")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train(args.steps, args.seq_len, args.hidden, args.batch, args.clip, args.seed)


if __name__ == "__main__":
    main()
