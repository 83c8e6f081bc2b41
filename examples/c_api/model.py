"""The graph of the C API example: 8 features -> 16 tanh units -> 3 classes.

graphc build examples/c_api/model.py:graph -o build/blobs
"""

import graphc as gc


def graph() -> gc.Graph:
    """A small classifier; its C API is what examples/c_api/train.c calls."""
    g = gc.Graph("blobs")
    x = g.input("x", (8,))
    y = g.input("y", (), dtype="int32")
    h = gc.dense(x, 16, activation="tanh", name="hidden")
    logits = gc.dense(h, 3, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return g
