"""A 2-layer Transformer encoder learns to reverse token sequences, trained with Adam and global-norm
gradient clipping; the gradient-norm curve is saved as a PNG.

    python examples/transformer_copy.py [--steps 600] [--plot grad_norm.png]

The task, made in code: a sequence of `seq_len` random tokens must be copied out in reverse order.
Every output position must attend to one other position, so the model needs attention and position
embeddings; a per-position model stays at chance (1 / vocab). The encoder is the post-norm layer of
Vaswani et al.: multi-head self-attention (batched matmul, softmax, dropout), residual + layer_norm,
a gelu feed-forward block, residual + layer_norm.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fluidlite as fl
from fluidlite import layers


def reversal_task(n, seq_len, vocab, rng):
    """(tokens int64 [n, seq_len], reversed int64 [n, seq_len, 1])."""
    tokens = rng.integers(0, vocab, size=(n, seq_len))
    return tokens, np.ascontiguousarray(tokens[:, ::-1]).reshape(n, seq_len, 1)


def _proj(x, size, act=None):
    return layers.fc(x, size, num_flatten_dims=2, act=act)


def encoder_layer(x, d_model, heads, d_ffn, dropout):
    """One post-norm encoder layer on x [B, T, d_model]."""
    dh = d_model // heads

    def split_heads(t):  # [B, T, d] -> [B, heads, T, dh]
        return layers.transpose(layers.reshape(t, [0, 0, heads, dh]), [0, 2, 1, 3])

    def drop(t):
        return layers.dropout(t, dropout, dropout_implementation="upscale_in_train") if dropout else t

    q, k, v = (split_heads(_proj(x, d_model)) for _ in range(3))
    scores = layers.matmul(q, k, transpose_y=True, alpha=dh ** -0.5)  # [B, heads, T, T]
    attended = layers.matmul(drop(layers.softmax(scores)), v)  # [B, heads, T, dh]
    merged = layers.reshape(layers.transpose(attended, [0, 2, 1, 3]), [0, 0, d_model])
    x = layers.layer_norm(x + drop(_proj(merged, d_model)), begin_norm_axis=2)
    ffn = _proj(layers.gelu(_proj(x, d_ffn)), d_model)
    return layers.layer_norm(x + drop(ffn), begin_norm_axis=2)


def build(seq_len, vocab, d_model=64, heads=4, n_layers=2, dropout=0.1, lr=3e-3, clip_norm=1.0):
    """(main, test program, startup, loss, logits, global_norm): the raw gradients' global norm is
    computed beside the clip (which scales every gradient by clip_norm / max(norm, clip_norm))."""
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 7
    with fl.program_guard(main, startup), fl.unique_name.guard():
        tokens = layers.data("tokens", [seq_len], dtype="int64")
        target = layers.data("target", [seq_len, 1], dtype="int64")
        pos = layers.create_parameter([seq_len, d_model], "float32", name="pos_embedding",
                                      default_initializer=fl.initializer.Normal(0.0, 0.1))
        h = layers.embedding(tokens, size=[vocab, d_model]) + pos  # [B, T, d] + [T, d]
        for _ in range(n_layers):
            h = encoder_layer(h, d_model, heads, 2 * d_model, dropout)
        logits = _proj(h, vocab)
        loss = layers.mean(layers.softmax_with_cross_entropy(logits, target))
        test = main.clone(for_test=True)
        _, params_grads = fl.optimizer.Adam(learning_rate=lr).minimize(
            loss, grad_clip=fl.clip.GradientClipByGlobalNorm(clip_norm=clip_norm))
        raw = [main.global_block().var(fl.grad_var_name(p.name)) for p, _ in params_grads]
        global_norm = layers.sqrt(layers.sums([layers.reduce_sum(layers.square(g)) for g in raw]))
    return main, test, startup, loss, logits, global_norm


def train(steps=600, seq_len=10, vocab=12, batch=64, d_model=64, dropout=0.1, clip_norm=1.0, seed=0,
          plot=None, log_every=100, verbose=True):
    """Trains, evaluates on fresh sequences, optionally plots the gradient norms; returns the results."""
    main, test, startup, loss, logits, global_norm = build(seq_len, vocab, d_model, dropout=dropout,
                                                           clip_norm=clip_norm)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(seed)
    losses, norms, times = [], [], []
    for step in range(steps):
        x, y = reversal_task(batch, seq_len, vocab, rng)
        t0 = time.perf_counter()
        value, norm = exe.run(main, feed={"tokens": x, "target": y}, fetch_list=[loss, global_norm], scope=scope)
        times.append(time.perf_counter() - t0)
        losses.append(float(value[0]))
        norms.append(float(np.asarray(norm).reshape(-1)[0]))
        if verbose and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  grad norm {norms[-1]:.3f}")
    x, y = reversal_task(1000, seq_len, vocab, np.random.default_rng(seed + 1))
    (out,) = exe.run(test, feed={"tokens": x, "target": y}, fetch_list=[logits], scope=scope)
    hits = out.argmax(-1) == y[..., 0]
    result = {"token_accuracy": float(hits.mean()), "sequence_accuracy": float(hits.all(1).mean()),
              "ms_per_step": 1e3 * float(np.median(times[len(times) // 5:])), "losses": losses, "norms": norms,
              "clipped_steps": int(sum(n > clip_norm for n in norms))}
    if verbose:
        print(f"held-out: token accuracy {result['token_accuracy']:.3f}, whole sequences "
              f"{result['sequence_accuracy']:.3f} (chance {1 / vocab:.3f}); {result['ms_per_step']:.2f} ms per step "
              f"(batch {batch}, seq {seq_len}, d {d_model}); clipped on {result['clipped_steps']} of {steps} steps")
    if plot:
        plot_norms(norms, clip_norm, plot)
    return result


def plot_norms(norms, clip_norm, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(norms, lw=0.8, label="global gradient norm (before clipping)")
    ax.axhline(clip_norm, color="tab:red", ls="--", lw=1, label=f"clip_norm = {clip_norm}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("norm")
    ax.set_title("Transformer on sequence reversal: Adam + GradientClipByGlobalNorm", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seq-len", type=int, default=10)
    parser.add_argument("--vocab", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="save the gradient-norm curve to this PNG")
    args = parser.parse_args(argv)
    train(args.steps, args.seq_len, args.vocab, args.batch, args.d_model, args.dropout, args.clip_norm, args.seed,
          args.plot)


if __name__ == "__main__":
    main()
