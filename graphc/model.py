"""The Model: a compiled graph loaded as a native library, with a NumPy-facing API.

Every array is validated (rank, shape, dtype) before any C call and copied into the
layout C expects when it is not already; the C side never sees a Python object.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import numpy as np

from graphc.errors import GraphError
from graphc.graph import Graph
from graphc.kernels import ModelPlan, Tensor
from graphc.ops.loss import ONE_HOT


class History:
    """Per-epoch metrics of ``fit``: ``history['loss']``, ``['accuracy']``, ``['val_loss']``..."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}

    def append(self, **metrics: float) -> None:
        """Record one epoch."""
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(float(value))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __repr__(self) -> str:
        last = {k: round(v[-1], 5) for k, v in self.history.items() if v}
        return f"<History {len(self.history.get('loss', []))} epochs, last {last}>"


class Model:
    """A trained-in-C model; build one with ``gc.compile``."""

    def __init__(
        self,
        graph: Graph,
        plan: ModelPlan,
        backward,
        library,
        optimizer,
        seed: int = 0,
        num_threads: int | None = None,
    ) -> None:
        self.graph = graph
        self.plan = plan
        self.optimizer = optimizer
        self.seed = int(seed)
        self._backward = backward
        self._library = library
        self._ffi = library.ffi
        self._lib = library.lib
        self._real = np.float32 if plan.dtype == "float32" else np.float64
        handle = self._call("create")
        if handle == self._ffi.NULL:
            raise MemoryError(
                f"could not allocate the {plan.memory.arena_bytes}-byte arena of model {plan.name!r}"
            )
        self._handle = handle
        self._finalizer = weakref.finalize(self, getattr(self._lib, f"{plan.name}_destroy"), handle)
        self._index: dict[str, int] = {}
        order: list[Tensor] = [pp.param for pp in plan.params]
        order += [pp.grad for pp in plan.params if pp.grad is not None]
        order += [s for pp in plan.params for s in pp.states]
        for k, t in enumerate(order):
            self._index[t.name] = k
        self._param_plans = {pp.param.label: pp for pp in plan.params}
        self._classes = {n.inputs[0].name: n.shape[-1] for n in graph.nodes if n.op is ONE_HOT}
        if num_threads is not None:
            self.num_threads = num_threads
        if optimizer is not None:
            self._call("set_lr", self._handle, optimizer.lr)
        self._init_params()

    # --- plumbing -------------------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> Any:
        return getattr(self._lib, f"{self.plan.name}_{name}")(*args)

    def _view(self, tensor: Tensor) -> np.ndarray:
        """A NumPy view of a persistent tensor in the arena (valid while the model lives)."""
        ptr = self._call("tensor", self._handle, self._index[tensor.name])
        dtype = np.dtype(self._real)
        buf = self._ffi.buffer(ptr, tensor.per_sample * dtype.itemsize)
        return np.frombuffer(buf, dtype=dtype).reshape(tensor.shape)

    def _ptr(self, array: np.ndarray, ctype: str) -> Any:
        return self._ffi.cast(f"{ctype} *", array.ctypes.data)

    def _init_params(self) -> None:
        rng = np.random.default_rng(self.seed)
        by_name = {p.name: p for p in self.graph.params}
        for pp in self.plan.params:
            node = by_name[pp.param.label]
            self._view(pp.param)[...] = node.attrs["init"].sample(node.shape, rng)

    def _inputs(
        self, args: tuple, kwargs: dict, wanted: tuple[Tensor, ...], what: str
    ) -> tuple[list[np.ndarray], int]:
        """Validate and convert inputs given positionally (declaration order) or by name."""
        declared = list(self.plan.inputs)
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            given = dict(args[0])
        else:
            if len(args) > len(declared):
                raise ValueError(
                    f"{what}: got {len(args)} positional inputs but the model declares "
                    f"{len(declared)}: {', '.join(t.label for t in declared)}"
                )
            given = {t.label: a for t, a in zip(declared, args)}
            given.update(kwargs)
        unknown = set(given) - {t.label for t in declared}
        if unknown:
            raise ValueError(
                f"{what}: unknown input(s) {sorted(unknown)}; the model's inputs are "
                f"{[t.label for t in declared]}"
            )
        arrays, rows = [], None
        for t in wanted:
            if t.label not in given:
                raise ValueError(f"{what}: missing input {t.label!r} of shape {('N',) + t.shape}")
            array = self._convert(t, given[t.label])
            if rows is not None and array.shape[0] != rows:
                raise ValueError(
                    f"{what}: input {t.label!r} has {array.shape[0]} rows but the others have {rows}"
                )
            rows = array.shape[0]
            arrays.append(array)
        return arrays, rows or 0

    def _convert(self, t: Tensor, value: Any) -> np.ndarray:
        expected = ("N",) + t.shape
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"input {t.label!r}: cannot convert to an array ({exc})") from exc
        if array.ndim != len(expected) or array.shape[1:] != t.shape:
            raise ValueError(
                f"input {t.label!r}: expected shape {expected} (N rows), got {array.shape}"
            )
        if t.dtype == "int32":
            if array.dtype.kind == "f":
                if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                    raise ValueError(f"input {t.label!r}: labels must be whole numbers")
            elif array.dtype.kind not in "iub":
                raise ValueError(
                    f"input {t.label!r}: expected integer labels, got dtype {array.dtype}"
                )
            classes = self._classes.get(t.label)
            if classes is not None and array.size and (array.min() < 0 or array.max() >= classes):
                raise ValueError(
                    f"input {t.label!r}: labels must lie in [0, {classes}), got values from "
                    f"{array.min()} to {array.max()}"
                )
            return np.ascontiguousarray(array, dtype=np.int32)
        if array.dtype.kind not in "fiub":
            raise ValueError(f"input {t.label!r}: expected numbers, got dtype {array.dtype}")
        return np.ascontiguousarray(array, dtype=self._real)

    def _program_inputs(self, name: str) -> tuple[Tensor, ...]:
        for p in self.plan.programs:
            if p.name == name:
                return p.inputs
        raise GraphError(
            f"model {self.plan.graph_name!r} has no {name} program: "
            + (
                "declare g.minimize(loss) to train or evaluate"
                if name != "infer"
                else "declare outputs with g.output(name, node) to predict"
            )
        )

    def _c_args(self, arrays: list[np.ndarray], tensors: tuple[Tensor, ...]) -> list[Any]:
        return [
            self._ptr(a, "int32_t" if t.dtype == "int32" else self._ctype)
            for a, t in zip(arrays, tensors)
        ]

    @property
    def _ctype(self) -> str:
        return "float" if self._real is np.float32 else "double"

    # --- training -----------------------------------------------------------------------
    def train_step(self, *args: Any, **kwargs: Any) -> float:
        """One step of training on at most ``batch_size`` rows; returns the batch's mean loss."""
        tensors = self._program_inputs("train")
        arrays, rows = self._inputs(args, kwargs, tensors, "train_step")
        if not 0 < rows <= self.plan.batch:
            raise ValueError(
                f"train_step: got {rows} rows; a step takes 1 to {self.plan.batch} rows "
                "(the compiled batch_size); use fit() for more"
            )
        return float(self._call("train_step", self._handle, *self._c_args(arrays, tensors), rows))

    def gradients(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        """∂E/∂param for one batch, without updating anything."""
        tensors = self._program_inputs("grad")
        arrays, rows = self._inputs(args, kwargs, tensors, "gradients")
        if not 0 < rows <= self.plan.batch:
            raise ValueError(f"gradients: got {rows} rows; give 1 to {self.plan.batch}")
        self._call("gradients", self._handle, *self._c_args(arrays, tensors), rows)
        return {
            label: self._view(pp.grad).copy()
            for label, pp in self._param_plans.items()
            if pp.grad is not None
        }

    def fit(
        self,
        *args: Any,
        epochs: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
        validation_data: Any = None,
        verbose: int = 0,
        **kwargs: Any,
    ) -> History:
        """Train for ``epochs`` epochs; each epoch is one call into C."""
        tensors = self._program_inputs("train")
        arrays, rows = self._inputs(args, kwargs, tensors, "fit")
        if rows == 0:
            raise ValueError("fit: the training set is empty")
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"fit: epochs must be a non-negative integer, got {epochs!r}")
        if validation_data is not None and not isinstance(validation_data, dict):
            validation_data = tuple(validation_data)
        perm = np.empty(rows, dtype=np.int64)
        hits = self._ffi.new("double *")
        history = History()
        base_seed = self.seed if seed is None else int(seed)
        pointers = self._c_args(arrays, tensors)
        for _ in range(epochs):
            epoch = int(self._call("epoch", self._handle))
            shuffle_seed = (base_seed * 1_000_003 + epoch) & 0xFFFFFFFFFFFFFFFF
            loss = self._call(
                "train_epoch",
                self._handle,
                *pointers,
                rows,
                self._ptr(perm, "int64_t"),
                shuffle_seed,
                int(shuffle),
                hits,
            )
            metrics = {"loss": loss}
            if self.plan.accuracy:
                metrics["accuracy"] = hits[0] / (rows * self.plan.rows_per_sample)
            if validation_data is not None:
                val = (
                    self.evaluate(validation_data)
                    if isinstance(validation_data, dict)
                    else self.evaluate(*validation_data)
                )
                metrics.update({f"val_{k}": v for k, v in val.items()})
            history.append(**metrics)
            if verbose:
                text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                print(f"epoch {epoch + 1}: {text}", file=sys.stderr)
        return history

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Mean loss (and accuracy, for classification losses) over all rows."""
        tensors = self._program_inputs("eval")
        arrays, rows = self._inputs(args, kwargs, tensors, "evaluate")
        hits = self._ffi.new("double *")
        loss = self._call("evaluate", self._handle, *self._c_args(arrays, tensors), rows, hits)
        result = {"loss": float(loss)}
        if self.plan.accuracy:
            result["accuracy"] = hits[0] / max(1, rows * self.plan.rows_per_sample)
        return result

    def predict(self, *args: Any, **kwargs: Any) -> np.ndarray | dict[str, np.ndarray]:
        """Outputs for any number of rows (computed in chunks of ``batch_size`` in C)."""
        tensors = self._program_inputs("infer")
        arrays, rows = self._inputs(args, kwargs, tensors, "predict")
        outs = {
            name: np.empty((rows,) + t.shape, dtype=self._real) for name, t in self.plan.outputs
        }
        self._call(
            "predict",
            self._handle,
            *self._c_args(arrays, tensors),
            rows,
            *[self._ptr(o, self._ctype) for o in outs.values()],
        )
        return next(iter(outs.values())) if len(outs) == 1 else outs

    # --- parameters and settings ----------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, by graph name."""
        return {label: self._view(pp.param).copy() for label, pp in self._param_plans.items()}

    def set_params(self, values: dict[str, Any], strict: bool = True) -> None:
        """Overwrite parameters by name; unknown names or wrong shapes raise (unless not strict)."""
        checked = {}
        for name, value in values.items():
            if name not in self._param_plans:
                if strict:
                    raise KeyError(
                        f"set_params: model has no parameter {name!r}; it has "
                        f"{sorted(self._param_plans)}"
                    )
                continue
            shape = self._param_plans[name].param.shape
            array = np.asarray(value, dtype=np.float64)
            if array.shape != shape:
                if strict:
                    raise ValueError(
                        f"set_params: {name!r} must have shape {shape}, got {array.shape}"
                    )
                continue
            checked[name] = array
        for name, array in checked.items():
            self._view(self._param_plans[name].param)[...] = array

    @property
    def lr(self) -> float:
        """The base learning rate (η0 of the schedule)."""
        return self.optimizer.lr if self.optimizer else 0.0

    @lr.setter
    def lr(self, value: float) -> None:
        if value <= 0:
            raise ValueError(f"lr must be positive, got {value}")
        self.optimizer.schedule.eta0 = float(value)
        self._call("set_lr", self._handle, float(value))

    @property
    def num_threads(self) -> int:
        """OpenMP threads used by each call (default: OpenMP's default)."""
        return self._threads if hasattr(self, "_threads") else 0

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        self._threads = int(value)
        self._call("set_threads", self._handle, int(value))

    @property
    def step(self) -> int:
        """Training steps taken so far."""
        return int(self._call("step", self._handle))

    @property
    def epoch(self) -> int:
        """Epochs finished so far."""
        return int(self._call("epoch", self._handle))

    # --- inspection -----------------------------------------------------------------------
    @property
    def source(self) -> str:
        """The generated C source."""
        with open(self._library.source_path) as f:
            return f.read()

    @property
    def header(self) -> str:
        """The generated C header."""
        with open(self._library.header_path) as f:
            return f.read()

    @property
    def source_path(self) -> str:
        """Path of the generated C file."""
        return self._library.source_path

    @property
    def library_path(self) -> str:
        """Path of the compiled shared library."""
        return self._library.library_path

    @property
    def batch_size(self) -> int:
        """Rows per training step (compile-time)."""
        return self.plan.batch

    def explain(self) -> str:
        """The δ recurrences and parameter gradients the compiler derived, as text."""
        from graphc.explain import explain

        return explain(
            self.graph, frozen={pp.param.label for pp in self.plan.params if not pp.trainable}
        )

    def __repr__(self) -> str:
        return (
            f"<Model {self.plan.graph_name!r} {self.plan.dtype} batch={self.plan.batch} "
            f"arena={self.plan.memory.arena_bytes}B>"
        )
