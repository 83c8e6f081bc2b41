"""graphc: a symbolic graph compiler for neural networks that emits C.

Declare a network as a static graph, let the compiler derive its δ (backpropagation)
recurrences symbolically, and train it through generated C compiled ahead of time.
"""

from graphc import schedules
from graphc.build import clear_cache
from graphc.checkpoint import Checkpoint
from graphc.checkpoint import load as load
from graphc.compiler import compile
from graphc.errors import (
    CheckpointError,
    CompileError,
    CompilerNotFoundError,
    DeviceError,
    GraphcError,
    GraphError,
    NotDifferentiableError,
    ShapeError,
)
from graphc.explain import explain
from graphc.graph import Graph, Init, Node
from graphc.history import Callback, CheckpointEvery, EarlyStopping, History
from graphc.layers import dense
from graphc.ops.combine import concat, repeat
from graphc.ops.conv import conv1d, conv2d
from graphc.ops.dropout import dropout
from graphc.ops.elementwise import (
    activation,
    elu,
    exp,
    identity,
    leaky_relu,
    log,
    relu,
    sigmoid,
    sign,
    softplus,
    square,
    step,
    tanh,
)
from graphc.ops.embedding import embedding
from graphc.ops.linalg import matmul
from graphc.ops.loss import (
    binary_cross_entropy,
    cross_entropy,
    mse,
    one_hot,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
)
from graphc.ops.pool import max_pool1d, max_pool2d, mean_pool1d, mean_pool2d
from graphc.ops.recurrent import gru, lstm, rnn
from graphc.ops.reduce import mean, sum
from graphc.ops.shape import flatten, reshape
from graphc.ops.softmax import softmax
from graphc.optim import SGD, AdaGrad, Adam, Optimizer, RMSProp
from graphc.perceptron import Perceptron

__version__ = "0.1.0"

__all__ = [
    "Perceptron",
    "Callback",
    "CheckpointEvery",
    "EarlyStopping",
    "History",
    "SGD",
    "AdaGrad",
    "Adam",
    "Optimizer",
    "RMSProp",
    "Checkpoint",
    "clear_cache",
    "compile",
    "explain",
    "schedules",
    "CheckpointError",
    "CompileError",
    "CompilerNotFoundError",
    "DeviceError",
    "Graph",
    "GraphError",
    "GraphcError",
    "Init",
    "Node",
    "NotDifferentiableError",
    "ShapeError",
    "activation",
    "binary_cross_entropy",
    "conv1d",
    "conv2d",
    "cross_entropy",
    "dense",
    "dropout",
    "elu",
    "exp",
    "flatten",
    "identity",
    "leaky_relu",
    "load",
    "log",
    "matmul",
    "max_pool1d",
    "max_pool2d",
    "mean",
    "mean_pool1d",
    "mean_pool2d",
    "mse",
    "one_hot",
    "relu",
    "reshape",
    "sigmoid",
    "sigmoid_binary_cross_entropy",
    "sign",
    "softmax",
    "softmax_cross_entropy",
    "softplus",
    "square",
    "step",
    "sum",
    "tanh",
    "concat",
    "embedding",
    "gru",
    "lstm",
    "repeat",
    "rnn",
]
