"""Character-level language model: a GRU learns to continue ten of Shakespeare's sonnets.

The text (examples/data/sonnets.txt: sonnets 1, 2, 12, 18, 29, 30, 55, 60, 73 and 116, in
the public domain) is cut into windows of T = 48 characters; at every step the model reads
a character (one-hot) and predicts the next one:

    ids (T,) -> one_hot -> gru(192, every step) -> dense(vocab) -> softmax cross-entropy

trained by backpropagation through time in generated C.  Then a second, one-step graph with
the same parameter names samples text: it takes a character and the hidden state, returns
the next character's probabilities and the new state (``initial_state`` carries it from call
to call), so generating n characters costs n steps, not n windows.

Prints the loss per character (nats) as it falls and a sample; ``main`` returns the final
training loss per character.  Run from the repository root:  python examples/char_rnn.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

try:
    import graphc as gc
except ImportError:  # a source checkout without install: use the repository next door
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import graphc as gc

TEXT = Path(__file__).resolve().parent / "data" / "sonnets.txt"
STEPS, HIDDEN = 48, 192


def load(stride: int = 3) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    """The text, its alphabet, and windows of ids with their next-character targets."""
    text = TEXT.read_text()
    alphabet = sorted(set(text))
    ids = np.array([alphabet.index(ch) for ch in text], dtype=np.int32)
    starts = np.arange(0, len(ids) - STEPS - 1, stride)
    windows = np.stack([ids[s : s + STEPS] for s in starts])
    targets = np.stack([ids[s + 1 : s + STEPS + 1] for s in starts])
    return text, alphabet, windows, targets


def language_model(vocab: int, steps: int, sampler: bool = False) -> gc.Graph:
    """The training graph over ``steps`` characters, or the one-step sampler (state in, out)."""
    g = gc.Graph("char_sampler" if sampler else "char_gru")
    ids = g.input("ids", (steps,), dtype="int32")
    state = g.input("state", (HIDDEN,)) if sampler else None
    h = gc.gru(
        gc.one_hot(ids, vocab), HIDDEN, return_sequences=True, initial_state=state, name="gru"
    )
    logits = gc.dense(h, vocab, name="out")
    g.output("probs", gc.softmax(logits))
    if sampler:
        g.output("state", h)
    else:
        g.minimize(gc.softmax_cross_entropy(logits, g.input("next", (steps,), dtype="int32")))
    return g


def sample(model, alphabet: list[str], prompt: str, length: int, temperature: float = 0.6) -> str:
    """Continue ``prompt`` by ``length`` characters, one sampler step per character."""
    sampler = gc.compile(language_model(len(alphabet), 1, sampler=True), batch_size=1)
    sampler.set_params(model.params)
    rng = np.random.default_rng(7)
    state = np.zeros((1, HIDDEN), dtype=np.float32)
    out = []
    for ch in prompt:
        probs, state = _step(sampler, alphabet.index(ch), state)
    for _ in range(length):
        weights = np.exp(np.log(probs + 1e-12) / temperature)
        k = int(rng.choice(len(alphabet), p=weights / weights.sum()))
        out.append(alphabet[k])
        probs, state = _step(sampler, k, state)
    return prompt + "".join(out)


def _step(sampler, index: int, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = sampler.predict({"ids": np.array([[index]], dtype=np.int32), "state": state})
    return result["probs"][0, 0].astype(np.float64), result["state"][:, 0]


def main(epochs: int = 20) -> float:
    """Train, print the loss per character and a sample; return the last loss per character."""
    text, alphabet, X, y = load()
    print(f"{len(text)} characters, alphabet of {len(alphabet)}, {len(X)} windows of {STEPS}")
    model = gc.compile(
        language_model(len(alphabet), STEPS),
        batch_size=32,
        optimizer=gc.Adam(lr=3e-3, clip_norm=5.0),
    )
    start = time.perf_counter()
    loss = float("nan")
    for epoch in range(1, epochs + 1):
        history = model.fit(X, y, epochs=1)
        loss = history["loss"][-1] / STEPS  # the loss sums over the T steps of a window
        if epoch == 1 or epoch % 5 == 0:
            accuracy = history["accuracy"][-1]
            print(f"epoch {epoch:3d}: loss {loss:.3f} nats/char, next-char accuracy {accuracy:.1%}")
    rate = epochs * X.size / (time.perf_counter() - start)
    print(f"trained in {time.perf_counter() - start:.1f} s ({rate:,.0f} characters/s)")
    print("\nsample (temperature 0.6):\n")
    print(sample(model, alphabet, "Shall I ", 300))
    print(f"\ngenerated C: {model.source_path}")
    return loss


if __name__ == "__main__":
    main()
