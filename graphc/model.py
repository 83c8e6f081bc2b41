"""The Model: a compiled graph loaded as a native library, with a NumPy-facing API.

Every array is validated (rank, shape, dtype) before any C call and copied into the
layout C expects when it is not already; the C side never sees a Python object.
"""

from __future__ import annotations

import copy
import os
import sys
import time
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from graphc.checkpoint import Checkpoint
from graphc.checkpoint import load as load_checkpoint
from graphc.checkpoint import save as save_checkpoint
from graphc.errors import CheckpointError, DeviceError, GraphError
from graphc.graph import Graph
from graphc.history import Callback, History
from graphc.kernels import ModelPlan, Tensor
from graphc.ops.loss import ONE_HOT

_U64 = 0xFFFFFFFFFFFFFFFF


def _progress(epochs: int, verbose: Any):
    """A tqdm bar over epochs when wanted: verbose=1, or 'auto' on a terminal or in a notebook."""
    if verbose == "auto":
        verbose = sys.stderr.isatty() or "ipykernel" in sys.modules
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=epochs, unit="epoch", leave=True)


class Model:
    """A trained-in-C model; build one with ``gc.compile``."""

    def __init__(
        self,
        graph: Graph,
        plan: ModelPlan,
        library,
        optimizer,
        seed: int = 0,
        num_threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.graph = graph
        self.plan = plan
        self.optimizer = optimizer
        self._seed = int(seed)
        self._options = dict(options or {})
        self._library = library
        self._ffi = library.ffi
        self._lib = library.lib
        self._real = np.float32 if plan.dtype == "float32" else np.float64
        # a CUDA model keeps its tensors in device memory: Python copies them in and out
        self._device = getattr(library, "target", "c") != "c"
        self._handle = None
        handle = self._call("create")
        if handle == self._ffi.NULL:
            if self._device:
                reason = self._ffi.string(self._call("last_error", self._ffi.NULL)).decode()
                raise DeviceError(f"could not create model {plan.name!r} on the GPU: {reason}")
            raise MemoryError(
                f"could not allocate the {plan.memory.arena_bytes}-byte arena of model {plan.name!r}"
            )
        self._handle = handle
        self._finalizer = weakref.finalize(self, getattr(self._lib, f"{plan.name}_destroy"), handle)
        self._call("set_seed", handle, self._seed & _U64)
        self._index: dict[str, int] = {}
        order: list[Tensor] = [pp.param for pp in plan.params]
        order += [pp.grad for pp in plan.params if pp.grad is not None]
        order += [s for pp in plan.params for s in pp.states]
        for k, t in enumerate(order):
            self._index[t.name] = k
        self._param_plans = {pp.param.label: pp for pp in plan.params}
        # integer inputs that index something (one-hot classes, embedding rows): their range
        self._classes = {
            n.inputs[0].name: n.attrs.get("classes", n.shape[-1])
            for n in graph.nodes
            if n.op is ONE_HOT or "classes" in n.attrs
        }
        if num_threads is not None:
            self.num_threads = num_threads
        if optimizer is not None:
            self._call("set_lr", self._handle, optimizer.lr)
        self._init_params()

    # --- plumbing -------------------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self._lib, f"{self.plan.name}_{name}")(*args)
        if self._device and self._handle is not None:
            last_error = getattr(self._lib, f"{self.plan.name}_last_error")
            error = self._ffi.string(last_error(self._handle))
            if error:
                raise DeviceError(
                    f"model {self.plan.name!r} ({name}): {error.decode()}; the model's device "
                    "state may be lost, compile it again (GRAPHC_CUDA_SYNC=1 names the kernel "
                    "that failed)"
                )
        return result

    def _read(self, tensor: Tensor) -> np.ndarray:
        """A copy of a persistent tensor (parameter, gradient, optimizer state)."""
        if not self._device:
            return self._view(tensor).copy()
        array = np.empty(tensor.shape, dtype=self._real)
        self._call(
            "read_tensor", self._handle, self._index[tensor.name], self._ptr(array, self._ctype)
        )
        return array

    def _write(self, tensor: Tensor, value: Any) -> None:
        """Overwrite a persistent tensor with ``value`` (converted to the model's dtype)."""
        if not self._device:
            self._view(tensor)[...] = value
            return
        array = np.ascontiguousarray(np.broadcast_to(value, tensor.shape), dtype=self._real)
        self._call(
            "write_tensor", self._handle, self._index[tensor.name], self._ptr(array, self._ctype)
        )

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
            self._write(pp.param, node.attrs["init"].sample(node.shape, rng))

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

    def training_loss(self, *args: Any, **kwargs: Any) -> float:
        """Mean loss of one batch as training computes it, without updating anything.

        Dropout is on, with the masks of the current step counter (the last step's masks),
        so with ``gradients`` it gives a consistent loss/gradient pair for gradient checks.
        """
        tensors = self._program_inputs("grad")
        arrays, rows = self._inputs(args, kwargs, tensors, "training_loss")
        if not 0 < rows <= self.plan.batch:
            raise ValueError(f"training_loss: got {rows} rows; give 1 to {self.plan.batch}")
        return float(self._call("gradients", self._handle, *self._c_args(arrays, tensors), rows))

    def gradients(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        """∂E/∂param for one batch, without updating anything."""
        tensors = self._program_inputs("grad")
        arrays, rows = self._inputs(args, kwargs, tensors, "gradients")
        if not 0 < rows <= self.plan.batch:
            raise ValueError(f"gradients: got {rows} rows; give 1 to {self.plan.batch}")
        self._call("gradients", self._handle, *self._c_args(arrays, tensors), rows)
        return {
            label: self._read(pp.grad)
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
        verbose: Any = "auto",
        callbacks: list[Callback] | None = None,
        **kwargs: Any,
    ) -> History:
        """Train for ``epochs`` epochs; each epoch is one call into C (or CUDA).

        ``verbose="auto"`` shows a progress bar (loss, accuracy, samples/s) on a terminal or
        in a notebook, 0 keeps quiet, 1 always shows it.  ``callbacks`` (for example
        ``gc.EarlyStopping``, ``gc.CheckpointEvery``) run after every epoch.
        """
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
        callbacks = list(callbacks or [])
        for callback in callbacks:
            callback.on_train_begin(self)
        bar = _progress(epochs, verbose)
        # a CUDA model copies the training set to the device once per fit, when it fits there
        resident = self._device and self._call("data_upload", self._handle, *pointers, rows) == 0
        try:
            for _ in range(epochs):
                epoch = int(self._call("epoch", self._handle))
                started = time.perf_counter()
                shuffle_seed = (base_seed * 1_000_003 + epoch) & 0xFFFFFFFFFFFFFFFF
                # resident: the CUDA model gathers batches from its device copy of the data set
                data = [] if resident else pointers
                loss = self._call(
                    "data_epoch" if resident else "train_epoch",
                    self._handle,
                    *data,
                    rows,
                    self._ptr(perm, "int64_t"),
                    shuffle_seed,
                    int(shuffle),
                    hits,
                )
                elapsed = time.perf_counter() - started
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
                if bar is not None:
                    bar.set_postfix(
                        {
                            **{k: f"{v:.4f}" for k, v in metrics.items()},
                            "samples/s": f"{rows / max(elapsed, 1e-9):,.0f}",
                        }
                    )
                    bar.update(1)
                stop = False
                for callback in callbacks:
                    stop = callback.on_epoch_end(self, epoch + 1, metrics) or stop
                if stop:
                    break
        finally:
            if resident:
                self._call("data_release", self._handle)
        if bar is not None:
            bar.close()
        for callback in callbacks:
            callback.on_train_end(self)
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
        return {label: self._read(pp.param) for label, pp in self._param_plans.items()}

    def set_params(self, values: dict[str, Any] | Checkpoint, strict: bool = True) -> None:
        """Overwrite parameters by name; unknown names or wrong shapes raise (unless not strict).

        ``values`` may also be a Checkpoint (``gc.load(path)``): its parameters are used.
        """
        if isinstance(values, Checkpoint):
            values = values.params
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
            self._write(self._param_plans[name].param, array)

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
    def seed(self) -> int:
        """Seed of parameter initialization, shuffling and dropout masks."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)
        self._call("set_seed", self._handle, self._seed & _U64)

    @property
    def num_threads(self) -> int:
        """OpenMP threads used by each call (default: OpenMP's default)."""
        return self._threads if hasattr(self, "_threads") else 0

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        self._threads = int(value)
        self._call("set_threads", self._handle, int(value))

    @property
    def guarded_calls(self) -> int:
        """Calls that ran on fewer threads than ``num_threads`` because another process
        was sharing the team's cores (the shared-core guard of ``runtime/gc_team.h``; 0
        on the CUDA targets)."""
        if self._device:
            return 0
        return int(self._call("guarded_calls", self._handle))

    @property
    def step(self) -> int:
        """Training steps taken so far."""
        return int(self._call("step", self._handle))

    @property
    def epoch(self) -> int:
        """Epochs finished so far."""
        return int(self._call("epoch", self._handle))

    # --- optimizer state, freezing, checkpoints -------------------------------------------
    @property
    def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Copies of the optimizer state of every trained parameter: {param: {state: array}}."""
        return {
            label: {s.label[len(label) + 1 :]: self._read(s) for s in pp.states}
            for label, pp in self._param_plans.items()
            if pp.states
        }

    @property
    def frozen(self) -> list[str]:
        """Names of the parameters this model does not train."""
        return sorted(label for label, pp in self._param_plans.items() if not pp.trainable)

    def _param_names(self, names: str | Iterable[str], what: str) -> set[str]:
        """Parameter names from names of parameters or of layers ('hidden' -> hidden.W, hidden.b)."""
        if isinstance(names, str):
            names = [names]
        result: set[str] = set()
        for name in names:
            if name in self._param_plans:
                result.add(name)
                continue
            layer = [p for p in self._param_plans if p.startswith(f"{name}.")]
            if not layer:
                raise GraphError(
                    f"{what}: model {self.plan.graph_name!r} has no parameter or layer {name!r}; "
                    f"its parameters are {sorted(self._param_plans)}"
                )
            result.update(layer)
        return result

    def freeze(self, names: str | Iterable[str]) -> "Model":
        """A recompiled Model that does not train ``names`` (parameters or layer names).

        The new model computes no gradient and no update for frozen parameters (nor the
        δ's only they needed); it starts from this model's parameters, optimizer state,
        counters, seed, learning rate and thread count.  This model is left unchanged.
        """
        frozen = set(self._options.get("frozen", ())) | self._param_names(names, "freeze")
        return self._recompiled(frozen)

    def unfreeze(self, names: str | Iterable[str]) -> "Model":
        """A recompiled Model that trains ``names`` again; their optimizer state starts at zero.

        Parameters declared with ``trainable=False`` in the graph stay frozen: unfreezing
        one raises GraphError.
        """
        wanted = self._param_names(names, "unfreeze")
        declared = {p.name for p in self.graph.params if not p.attrs["trainable"]} & wanted
        if declared:
            raise GraphError(
                f"unfreeze: {sorted(declared)} are declared with trainable=False in the graph; "
                "declare them trainable and use model.freeze to freeze them for a while"
            )
        return self._recompiled(set(self._options.get("frozen", ())) - wanted)

    def _recompiled(self, frozen: set[str]) -> "Model":
        from graphc.compiler import compile as compile_graph

        if self.optimizer is None:
            raise GraphError("freeze/unfreeze need a trainable model (a loss and an optimizer)")
        model = compile_graph(
            self.graph,
            target=self._options.get("target", "c"),
            batch_size=self._options.get("batch_size", self.plan.batch),
            dtype=self.plan.dtype,
            optimizer=copy.deepcopy(self.optimizer),
            seed=self.seed,
            frozen=frozen,
            cflags=self._options.get("cflags"),
            num_threads=self._threads if hasattr(self, "_threads") else None,
        )
        model.load(self.checkpoint(), strict=False)
        return model

    def checkpoint(self) -> Checkpoint:
        """Everything ``save`` writes, in memory: params, optimizer state, counters, seed, lr."""
        return Checkpoint(
            graph=self.plan.graph_name,
            dtype=self.plan.dtype,
            params=self.params,
            state=self.optimizer_state,
            step=self.step,
            epoch=self.epoch,
            seed=self.seed,
            lr=self.lr if self.optimizer is not None else None,
            optimizer=self.plan.optimizer,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint file atomically (format: graphc.checkpoint, docs/training.md)."""
        save_checkpoint(self.checkpoint(), path)

    def load(self, source: str | os.PathLike | Checkpoint, strict: bool = True) -> "Model":
        """Restore params, optimizer state, counters, seed and lr from a file or a Checkpoint.

        ``strict`` (default): the checkpoint must come from a graph of the same name and
        hold exactly this model's parameters (names, shapes) and the optimizer state of
        every parameter it trains, in the model's dtype; state saved for parameters this
        model keeps frozen is ignored.  ``strict=False`` takes whatever matches by name and
        shape and leaves the rest as it is.  Everything is checked before anything is
        written: a bad checkpoint raises CheckpointError and leaves the model unchanged.
        Returns the model.
        """
        ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
        where = (
            "checkpoint" if isinstance(source, Checkpoint) else f"checkpoint {os.fspath(source)!r}"
        )
        if ckpt.dtype != self.plan.dtype:
            raise CheckpointError(
                f"{where} holds {ckpt.dtype} tensors but model {self.plan.graph_name!r} is "
                f"{self.plan.dtype}; compile the model with dtype={ckpt.dtype!r}"
            )
        if strict and ckpt.graph != self.plan.graph_name:
            raise CheckpointError(
                f"{where} was saved from graph {ckpt.graph!r}, not {self.plan.graph_name!r}; "
                "use model.set_params(gc.load(path).params, strict=False) to transfer weights"
            )
        writes: list[tuple[Tensor, np.ndarray]] = []
        if strict:
            missing = sorted(set(self._param_plans) - set(ckpt.params))
            extra = sorted(set(ckpt.params) - set(self._param_plans))
            if missing or extra:
                raise CheckpointError(
                    f"{where} does not match model {self.plan.graph_name!r}: "
                    + "; ".join(
                        text
                        for text in (
                            f"missing parameters {missing}" if missing else "",
                            f"unknown parameters {extra}" if extra else "",
                        )
                        if text
                    )
                )
        for label, pp in self._param_plans.items():
            array = ckpt.params.get(label)
            if array is None:
                continue
            if array.shape != pp.param.shape:
                if strict:
                    raise CheckpointError(
                        f"{where}: parameter {label!r} has shape {array.shape}, the model's "
                        f"has shape {pp.param.shape}"
                    )
                continue
            writes.append((pp.param, array))
            saved = ckpt.state.get(label, {})
            for tensor in pp.states:
                state = tensor.label[len(label) + 1 :]
                value = saved.get(state)
                if value is None or value.shape != pp.param.shape:
                    if strict:
                        raise CheckpointError(
                            f"{where} has no optimizer state {state!r} of shape "
                            f"{pp.param.shape} for {label!r} (it was saved with "
                            f"{ckpt.optimizer}, the model uses {self.plan.optimizer})"
                        )
                    continue
                writes.append((tensor, value))
        for tensor, array in writes:
            self._write(tensor, array)
        self._call("set_counters", self._handle, int(ckpt.step), int(ckpt.epoch))
        self.seed = ckpt.seed
        if ckpt.lr is not None and self.optimizer is not None:
            self.lr = ckpt.lr
        return self

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

    def summary(self) -> str:
        """A table of layers, output shapes, parameter counts, arena bytes and FLOPs per sample."""
        from graphc.summary import summary

        return summary(self)

    def manifest(self) -> dict[str, Any]:
        """What a C user of the built library needs: sizes, flags, tensor indices and shapes."""
        import hashlib

        tensors = []
        for name, index in sorted(self._index.items(), key=lambda kv: kv[1]):
            for pp in self.plan.params:
                for t in (pp.param, pp.grad, *pp.states):
                    if t is not None and t.name == name:
                        tensors.append(
                            {
                                "index": index,
                                "name": t.label,
                                "c_name": t.name,
                                "role": t.role,
                                "shape": list(t.shape),
                            }
                        )
        return {
            "graph": self.plan.graph_name,
            "prefix": self.plan.name,
            "graph_hash": hashlib.sha256(self.source.encode()).hexdigest(),
            "dtype": self.plan.dtype,
            "batch_size": self.plan.batch,
            "arena_bytes": self.plan.memory.arena_bytes,
            "compiler": self._library.compiler,
            "flags": list(self._library.flags),
            "optimizer": self.plan.optimizer,
            "inputs": [
                {
                    "name": t.label,
                    "dtype": t.dtype if t.dtype == "int32" else self.plan.dtype,
                    "shape": list(t.shape),
                }
                for t in self.plan.inputs
            ],
            "outputs": [{"name": n, "shape": list(t.shape)} for n, t in self.plan.outputs],
            "params": [
                {
                    "name": pp.param.label,
                    "shape": list(pp.param.shape),
                    "index": self._index[pp.param.name],
                    "trainable": pp.trainable,
                }
                for pp in self.plan.params
            ],
            "tensors": tensors,
        }

    def export(
        self,
        directory: str,
        name: str | None = None,
        training: bool = False,
        batch_size: int = 1,
        quantize: str | None = None,
        calibration: Any = None,
    ):
        """Write a standalone C99 project (no malloc, no threads) for embedded targets.

        ``quantize="int8"`` with ``calibration`` rows gives int8 dense layers; the returned
        ExportResult's ``evaluate(model, X, y)`` measures the accuracy this costs.
        """
        from graphc.export import export

        return export(
            self,
            directory,
            name=name,
            training=training,
            batch_size=batch_size,
            quantize=quantize,
            calibration=calibration,
        )

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
