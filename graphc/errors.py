"""Exceptions raised by graphc; each message names the node or file and says how to fix it."""


class GraphcError(Exception):
    """Base class of graphc's own errors."""


class GraphError(GraphcError, ValueError):
    """A graph is built or used in a way graphc cannot compile."""


class ShapeError(GraphError):
    """Shapes of a node's inputs do not fit its op."""


class NotDifferentiableError(GraphError):
    """The loss depends on a trainable parameter only through a non-differentiable op."""


class CompilerNotFoundError(GraphcError, RuntimeError):
    """No C (or CUDA) compiler could be found."""


class DeviceError(GraphcError, RuntimeError):
    """No CUDA device can run a model, or a CUDA call of a running model failed."""


class CompileError(GraphcError, RuntimeError):
    """The C compiler rejected generated code; carries its log and the source path."""

    def __init__(self, message: str, log: str, source_path: str) -> None:
        super().__init__(f"{message}\nsource: {source_path}\ncompiler log:\n{log}")
        self.log = log
        self.source_path = source_path


class CheckpointError(GraphcError, ValueError):
    """A checkpoint file is truncated, corrupt or does not match the model."""
