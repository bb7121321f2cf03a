"""Loading ONNX models and the graph facts every other module needs.

``Graph`` is a read-only view of a model: nodes in a topological order of our
own (the file's order is not trusted), who produces and who consumes each
tensor, which tensors carry data from the model input ("dynamic") and which
are constants, and the real shape of every tensor, learned by running the
model once (static shape inference leaves dims unknown in real exports).

The batch a model takes is its input's first dim (``fixed_batch``): most
exports fix it to 1, others leave it symbolic. Everything that runs samples
together runs them through ``run_batched``, in pieces that batch allows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from splitmq.shared.errors import ModelError
from splitmq.shared.model.providers import CPU, check_used

# Ops whose output depends only on the *shape* of their input. Their input edge
# is metadata, not data: a partition without the tensor rebuilds the shape
# from the batch size of its own input and the learned static dims.
SHAPE_OPS = frozenset({"Shape"})

ORT_DTYPES: dict[int, np.dtype] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.INT32: np.dtype(np.int32),
    onnx.TensorProto.INT64: np.dtype(np.int64),
    onnx.TensorProto.BOOL: np.dtype(np.bool_),
}


def load_model(path: Path | str) -> onnx.ModelProto:
    """Load and check an ONNX file, turning every failure into a ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise ModelError(f"{path}: not an ONNX model ({exc.__class__.__name__})") from exc
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes)")
    return checked(model, str(path))


def checked(model: onnx.ModelProto, where: str = "model") -> onnx.ModelProto:
    """Sort the nodes topologically (files need not be), then run onnx.checker."""
    nodes = _topological(model.graph)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{where}: invalid ONNX model: {first}") from exc
    return model


# Before IR 4 (ONNX 1.4) every initializer had to be declared as a graph input
# as well; the checker still enforces that for files that say IR 3.
FIRST_IR_WITH_FREE_INITIALIZERS = 4


def declare_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """List each undeclared initializer as a graph input if the model's IR needs it.

    A model built from parts of an IR-3 file keeps the file's IR version (its
    opsets may predate IR 4), so it must follow IR 3's rule. In place; returns ``model``.
    """
    if model.ir_version >= FIRST_IR_WITH_FREE_INITIALIZERS:
        return model
    declared = {i.name for i in model.graph.input}
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in model.graph.initializer
        if t.name not in declared
    )
    return model


def make_session(
    model: onnx.ModelProto | bytes, threads: int = 1, providers: Sequence[str] = CPU
) -> ort.InferenceSession:
    """An ONNX Runtime session with a fixed thread count (profiles depend on it), on the
    first of ``providers`` (ONNX Runtime's names, ``providers.resolve``) that starts: one
    that does not is a logged fallback to a later one, or a UserError (``check_used``)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        session = ort.InferenceSession(data, opts, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"ONNX Runtime cannot load the model: {exc}") from exc
    check_used(providers, session.get_providers())
    return session


def fixed_batch(first_dim: object) -> int | None:
    """The batch a model takes, from its input's first dim (an ONNX dim or an ONNX
    Runtime input's): that size when fixed (most exports: 1), None when it is symbolic
    or unknown (any size)."""
    return first_dim if isinstance(first_dim, int) and first_dim > 0 else None


def run_batched(
    session: ort.InferenceSession,
    names: list[str] | None,
    feed: str,
    x: np.ndarray,
    batch: int | None,
    most: int | None = None,
) -> list[np.ndarray]:
    """``session.run`` over the rows of ``x`` in pieces the model takes (``fixed_batch``):
    exactly ``batch`` rows when it is fixed, a short piece padded with copies of its last
    row whose outputs are dropped; up to ``most`` rows (None: all) when it is symbolic."""
    size = batch or most or len(x)
    if len(x) == size or (batch is None and len(x) <= size):
        return session.run(names, {feed: x})
    pieces = []
    for start in range(0, len(x), size):
        part = x[start : start + size]
        rows = len(part)
        if rows < size and batch is not None:
            part = np.concatenate([part, np.repeat(part[-1:], size - rows, axis=0)])
        values = session.run(names, {feed: part})
        pieces.append([_first_rows(v, rows, len(part)) for v in values])
    return [np.concatenate(column) for column in zip(*pieces, strict=True)]


def _first_rows(value: np.ndarray, rows: int, ran: int) -> np.ndarray:
    if value.ndim == 0 or value.shape[0] != ran:
        raise ModelError(
            f"an output of shape {list(value.shape)} does not start with the batch dim "
            f"({ran}): samples can run together only through batch-first outputs"
        )
    return value[:rows]


@dataclass(frozen=True)
class TensorInfo:
    """Per-sample facts about one tensor, learned from a real run."""

    name: str
    shape: tuple[int, ...]  # with batch 1
    dtype: str

    @property
    def bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class Graph:
    """Topologically ordered view of an ONNX model (see module docstring)."""

    model: onnx.ModelProto
    #: The outputs that answer together (a detector's heads); () -> the last output.
    answering: tuple[str, ...] = ()
    nodes: list[onnx.NodeProto] = field(init=False)
    producer: dict[str, int] = field(init=False)
    consumers: dict[str, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.nodes = _topological(self.model.graph)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.consumers = {}
        for i, n in enumerate(self.nodes):
            for t in dict.fromkeys(n.input):
                if t:
                    self.consumers.setdefault(t, []).append(i)

    @cached_property
    def initializers(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self.model.graph.initializer}

    @cached_property
    def input_name(self) -> str:
        """The one data input (old models also list initializers as inputs)."""
        real = [i.name for i in self.model.graph.input if i.name not in self.initializers]
        if len(real) != 1:
            raise ModelError(f"splitmq splits models with one input; this one has {len(real)}")
        return real[0]

    @cached_property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    @cached_property
    def finals(self) -> list[str]:
        """The outputs that answer together: every cut but the last leads to all of
        them; the outputs before them are exit heads."""
        return list(self.answering) or self.output_names[-1:]

    def answers(self, exits: list[str], finals: list[str]) -> Graph:
        """This model as splitmq runs it: ``exits`` then ``finals`` are its only outputs
        (a config may pick some of a model's outputs, so the others are never computed)."""
        if [*exits, *finals] == self.output_names and finals == self.finals:
            return self
        by_name = {o.name: o for o in self.model.graph.output}
        view = onnx.ModelProto()
        view.CopyFrom(self.model)
        del view.graph.output[:]
        view.graph.output.extend(by_name[n] for n in [*exits, *finals])
        return Graph(view, tuple(finals))

    @cached_property
    def dynamic(self) -> frozenset[str]:
        """Tensors whose values depend on the model input (shape reads excluded)."""
        dyn = {self.input_name}
        for n in self.nodes:
            if n.op_type not in SHAPE_OPS and any(t in dyn for t in n.input):
                dyn.update(o for o in n.output if o)
        return frozenset(dyn)

    def dynamic_inputs(self, node: onnx.NodeProto) -> list[str]:
        if node.op_type in SHAPE_OPS:
            return []
        return [t for t in dict.fromkeys(node.input) if t in self.dynamic]

    def input_shape(self) -> list[int | str]:
        vi = next(i for i in self.model.graph.input if i.name == self.input_name)
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim
        ]

    @cached_property
    def batch(self) -> int | None:
        """The batch this model takes (``fixed_batch`` of its input's first dim)."""
        dims = self.input_shape()
        return fixed_batch(dims[0]) if dims else None

    def sample_input(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """A random input of the batch the model takes (1 unless fixed to more);
        unknown non-batch dims cannot be guessed."""
        vi = next(i for i in self.model.graph.input if i.name == self.input_name)
        dims = self.input_shape()
        if any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
            raise ModelError(
                f"input {self.input_name!r} has unknown dims {dims}: export it with a fixed "
                "sample size (only the batch dim may be symbolic)"
            )
        dtype = ORT_DTYPES.get(vi.type.tensor_type.elem_type)
        if dtype is None:
            raise ModelError(f"input {self.input_name!r} has an unsupported element type")
        shape = (self.batch or 1, *(int(d) for d in dims[1:]))
        rng = rng or np.random.default_rng(0)
        if dtype.kind == "f":
            return rng.standard_normal(shape).astype(dtype)
        return rng.integers(0, 255, shape).astype(dtype)

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        """Real per-sample shape and dtype of every tensor, from one run on a sample (a
        model whose batch is fixed to N > 1 runs N: its data tensors count one of them)."""
        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        names = [o for n in self.nodes for o in n.output if o]
        del probe.graph.output[:]
        probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
        session = make_session(probe)
        x = self.sample_input()
        try:
            values = session.run(names, {self.input_name: x})
        except Exception as exc:
            raise ModelError(f"running the model on a sample input failed: {exc}") from exc
        values.append(x)
        names.append(self.input_name)
        return {
            n: TensorInfo(n, self._per_sample(n, v.shape), str(v.dtype))
            for n, v in zip(names, values)
        }

    def _per_sample(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        batch = self.batch
        if batch is not None and batch > 1 and name in self.dynamic and shape[:1] == (batch,):
            return (1, *shape[1:])
        return tuple(shape)

    def param_bytes(self, node: onnx.NodeProto) -> int:
        inits = self.initializers
        return sum(_tensor_nbytes(inits[t]) for t in node.input if t in inits)

    def macs(self, node: onnx.NodeProto) -> int:
        """Multiply-accumulates of one node for one sample (the rest as elementwise)."""
        out = self.tensors.get(node.output[0]) if node.output else None
        if out is None:
            return 0
        out_elems = int(np.prod(out.shape, dtype=np.int64))
        if node.op_type == "Conv" and len(node.input) > 1:
            w = self._shape_of(node.input[1])
            return out_elems * int(np.prod(w[1:], dtype=np.int64)) if w else out_elems
        if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
            a = self._shape_of(node.input[0])
            if not a:
                return out_elems
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[0] if node.op_type == "Gemm" and trans_a else a[-1]
            return out_elems * int(k)
        if node.op_type in SHAPE_OPS or node.output[0] not in self.dynamic:
            return 0
        return out_elems

    def _shape_of(self, name: str) -> tuple[int, ...] | None:
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        info = self.tensors.get(name)
        return info.shape if info else None


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    return int(numpy_helper.to_array(t).nbytes) if t.data_location == 0 else 0


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Kahn's order, stable with respect to the file; a cycle is a ModelError."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    available.add("")
    produced_by = {o: i for i, n in enumerate(graph.node) for o in n.output}
    waiting = [0] * len(graph.node)
    users: dict[int, list[int]] = {}
    for i, n in enumerate(graph.node):
        deps = {produced_by[t] for t in n.input if t not in available and t in produced_by}
        missing = [t for t in n.input if t not in available and t not in produced_by]
        if missing:
            raise ModelError(f"node {n.name or n.op_type!r} reads undefined tensor {missing[0]!r}")
        waiting[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = deque(i for i, w in enumerate(waiting) if w == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(order) != len(graph.node):
        raise ModelError("the graph has a cycle")
    return [graph.node[i] for i in order]
