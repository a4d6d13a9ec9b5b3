"""Dependency graph: trace a model, propagate channel labels, and group coupled channels.

``build_dependency_graph(model, example_inputs)`` symbolically traces the model with torch.fx,
then executes the traced graph node by node on meta tensors of the example inputs' shapes
(``_shape_exec``; fake, then real tensors if an op needs values), computing every node's
output shape *and* its channel labels (see ``_labels``). Op semantics live in ``_ops``. The
result is a :class:`DependencyGraph`:

* **members**: every prunable tensor dimension (a conv's output rows, a BatchNorm's channels,
  a Linear's input features ...) with the raw channel id of each of its indices;
* **atoms**: connected components of the coupling edges, i.e. the sets of channels that must be
  removed together (one residual-stream channel across every block of a stage, one group of a
  depthwise conv, a shuffled pair of ShuffleNetV2 channels ...);
* **groups**: members that share atoms, the "layers that shrink together";
* which atoms are blocked, and why (model output, unsupported op, user exclusion ...);
* the layer list for a fast, exact cost model of conv/Linear MACs and parameters.

Both modes: the model is traced in eval mode (what is deployed, and what every cost is) and in
train mode. When the train-mode fx graph makes calls the eval one does not (an auxiliary
classifier called only when ``self.training``, as in GoogLeNet and Inception-v3; mode flags such
as ``F.dropout(..., training=True)`` do not count, see ``_modes``), it is run too, into the same
coupling, reusing the eval pass's values for the calls both graphs make: a module both graphs
call is one member, so the channels an auxiliary head reads are coupled with the trunk that
writes them, and the train-mode outputs are protected as well. Its layers that the eval graph
does not call count their parameters but no MACs (``DependencyGraph.train_layers``): they exist
in the model, they do not run in the deployed one. A train-only part that cannot run on the
example input (Inception-v3's auxiliary head below 299x299) is skipped, and the channels it
reads are kept (``DependencyGraph.train_cut`` says where).
"""
from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx import Graph, GraphModule, Node, Proxy, Tracer

from compressor.graph._cost import attention_counted, flop_counter
from compressor.graph._inputs import as_tuple
from compressor.graph._labels import Coupling
from compressor.graph._modes import buffers_kept, call_key, evaluating, same_calls, training, with_eval_flags
from compressor.graph._shape_exec import MetaExecutor
from compressor.common.errors import TraceError
from compressor.graph._op_table import is_flop_free
import compressor.graph._ops as _ops

PRODUCER_KINDS = ("conv_out", "linear_out")
RESIDUAL_POLICIES = ("coupled", "internal")


@dataclass
class Member:
    """One prunable tensor dimension of one module.

    ``tensors`` lists ``(attribute, axis)`` pairs that are sliced together along this member;
    ``ids[i]`` is the raw channel id of index ``i`` (-1 = never removed).
    """

    module: str
    kind: str  # conv_out | conv_in | linear_out | linear_in | bn | norm | param
    ids: torch.Tensor
    tensors: tuple[tuple[str, int], ...]
    groups: int = 1
    group_mode: str = ""  # "" | "group" (remove whole conv groups) | "width" (same slot in every group)

    @property
    def size(self) -> int:
        return int(self.ids.numel())


@dataclass
class LayerCost:
    """Conv or Linear call whose MACs/params depend on kept channel counts."""

    module: str
    kind: str  # conv | linear
    out_member: int | None
    in_member: int | None
    out_size: int
    in_size: int
    groups: int
    group_mode: str
    macs_per_unit: float  # MACs per sample per (out channel x in channel per group)
    params_per_unit: int  # weight elements per (out x in-per-group); 0 for a repeated call
    bias: bool

    def _in_per_group(self, inp: int) -> int:
        # removing whole groups ("group" mode) keeps each group's width
        return self.in_size // self.groups if self.group_mode == "group" else inp // self.groups

    def kept_widths(self, kept: np.ndarray | None) -> tuple[int, int]:
        """(output, input) channels with the per-member ``kept`` counts (None: unpruned)."""
        if kept is None:
            return self.out_size, self.in_size
        out = self.out_size if self.out_member is None else int(kept[self.out_member])
        inp = self.in_size if self.in_member is None else int(kept[self.in_member])
        return out, inp

    def macs(self, out: int, inp: int) -> float:
        """MACs per sample with ``out`` output and ``inp`` input channels kept."""
        return self.macs_per_unit * out * self._in_per_group(inp)

    def params(self, out: int, inp: int) -> int:
        """Weight (and bias) elements; 0 for a repeated call of a shared layer."""
        if not self.params_per_unit:
            return 0
        return self.params_per_unit * out * self._in_per_group(inp) + (out if self.bias else 0)


@dataclass
class ChannelGroup:
    """Members that shrink together, and the atoms that can be removed from them."""

    index: int
    members: list[int]
    atoms: np.ndarray  # every atom touching these members
    removable: np.ndarray  # the subset that may be removed
    blocked_reasons: list[str]

    def describe(self, graph: "DependencyGraph") -> str:
        names = sorted({graph.members[m].module for m in self.members})
        shown = ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
        return f"group {self.index}: {len(self.atoms)} channels, {len(self.removable)} removable [{shown}]"


@dataclass
class DependencyGraph:
    members: list[Member]
    atom_of_id: np.ndarray
    num_atoms: int
    blocked: np.ndarray  # bool per atom
    block_reason: dict[int, str]
    renormalized: np.ndarray  # bool per atom: removal changes a LayerNorm's statistics
    producer: np.ndarray  # bool per atom: owns a conv/Linear output
    groups: list[ChannelGroup]
    layers: list[LayerCost]
    macs: float  # per sample, whole model (FlopCounterMode / 2)
    params: int
    other_macs: float  # MACs not modelled by ``layers`` (attention matmuls ...); constant
    other_params: int
    batch_size: int
    param_per_index: list[int]  # parameters per index of each bn/norm/param member (0 for others)
    unsupported: dict[str, int] = field(default_factory=dict)  # reason -> blocked atoms
    residual: np.ndarray | None = None  # bool per atom: a channel where feature maps are added (residual stream)
    traced: Graph | None = None  # the fx graph the labels were computed on (pruned models are checked on it)
    execution: str = "meta"  # what the trace ran on: meta | fake | real tensors
    traced_train: Graph | None = None  # the train-mode fx graph, when it differs from ``traced`` (also run)
    train_layers: list[LayerCost] = field(default_factory=list)  # conv/Linear layers only train mode calls: params, no MACs
    train_cut: str = ""  # where the train-mode graph failed on the example input (skipped from there); "" = it ran

    def __post_init__(self) -> None:
        sizes = [member.size for member in self.members]
        ids = np.concatenate([member.ids.numpy().reshape(-1) for member in self.members]) if self.members \
            else np.zeros(0, dtype=np.int64)
        atoms = np.full(ids.shape, -1, dtype=np.int64)
        ok = ids >= 0
        atoms[ok] = self.atom_of_id[ids[ok]]
        atoms.flags.writeable = False  # member_atoms() hands out views of it
        self._member_atoms = np.split(atoms, np.cumsum(sizes)[:-1]) if self.members else []
        # every member's indices, flattened: kept counts for a removal are one bincount
        self._flat_atoms = atoms
        self._flat_member = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        self._sizes = np.array(sizes, dtype=np.int64)

    # ---- atoms ---------------------------------------------------------------------------
    def member_atoms(self, m: int) -> np.ndarray:
        """Atom of each index of member ``m`` (-1 for indices that are never removed)."""
        return self._member_atoms[m]

    @property
    def removable(self) -> np.ndarray:
        return np.flatnonzero(self.producer & ~self.blocked)

    def kept_counts(self, removed: np.ndarray) -> np.ndarray:
        """Kept index count of every member, given a bool-per-atom removal mask."""
        atoms = self._flat_atoms
        gone = np.zeros(atoms.shape, dtype=bool)
        ok = atoms >= 0
        gone[ok] = removed[atoms[ok]]
        return self._sizes - np.bincount(self._flat_member[gone], minlength=len(self.members))

    def kept_mask(self, m: int, removed: np.ndarray) -> np.ndarray:
        """Which indices of member ``m`` survive a bool-per-atom removal mask."""
        atoms = self._member_atoms[m]
        kept = np.ones(atoms.shape, dtype=bool)
        ok = atoms >= 0
        kept[ok] = ~removed[atoms[ok]]
        return kept

    # ---- cost ----------------------------------------------------------------------------
    def cost(self, kept: np.ndarray | None = None) -> tuple[float, float]:
        """(MACs per sample, params) for the given per-member kept counts (None = unpruned)."""
        macs = self.other_macs
        params = float(self.other_params)
        for layer in self.layers:
            out, inp = layer.kept_widths(kept)
            macs += layer.macs(out, inp)
            params += layer.params(out, inp)
        for layer in self.train_layers:  # parameters of the model, not run when deployed
            params += layer.params(*layer.kept_widths(kept))
        for m, member in enumerate(self.members):
            params += self.param_per_index[m] * (kept[m] if kept is not None else member.size)
        return macs, params

    def describe(self) -> str:
        lines = [
            f"{len(self.members)} prunable dims, {self.num_atoms} channel atoms in {len(self.groups)} groups, "
            f"{len(self.removable)} removable",
        ]
        for reason, n in sorted(self.unsupported.items(), key=lambda kv: -kv[1]):
            lines.append(f"  blocked {n:5d} atoms: {reason}")
        if self.traced_train is not None:
            cut = f"; it fails on the example input at {self.train_cut}" if self.train_cut else ""
            lines.append(f"  train mode traced too: {len(self.train_layers)} conv/Linear layers run only in training "
                         f"(their parameters count, their MACs do not){cut}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# tracing


class _LeafTracer(Tracer):
    """torch.fx tracer whose leaves are torch.nn's own modules, the optional packages' layers that
    ``_op_table`` names (timm's BlurPool2d), and user-named classes."""

    def __init__(self, extra_leaves: tuple[type, ...] = ()):
        super().__init__()
        self.extra_leaves = extra_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        return _ops.named_module_handler(type(m)) is not None or super().is_leaf_module(m, qualname)

    def proxy(self, node: Node) -> Any:
        return _SizedProxy(node, self)

    def iter(self, obj: Any) -> Any:
        """Iterate a proxy whose length the call that made it fixes: ``list(x.chunk(2, 1))``
        (Ultralytics' C2f/C3k2), ``x.split([a, b], 1)``, ``x.unbind(0)`` on a known size ...
        torch.fx itself only unpacks such results into a fixed number of names."""
        count = _known_length(obj.node)
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])


class _SizedProxy(Proxy):
    """A proxy that knows its length when the call that made it fixes it (``list(proxy)`` asks)."""

    def __len__(self) -> int:
        count = _known_length(self.node)
        return count if count is not None else super().__len__()


def _known_length(node: Node) -> int | None:
    """How many tensors a chunk/split node returns, when its arguments alone tell."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    args = node.args[1:] if node.op in ("call_method", "call_function") else ()
    if name == "chunk" and args and isinstance(args[0], int):
        return args[0]
    if name == "chunk" and "chunks" in node.kwargs and isinstance(node.kwargs["chunks"], int):
        return node.kwargs["chunks"]
    if name in ("split", "split_with_sizes"):
        sizes = args[0] if args else node.kwargs.get("split_size_or_sections", node.kwargs.get("split_sizes"))
        if isinstance(sizes, (list, tuple)) and all(isinstance(v, int) for v in sizes):
            return len(sizes)
    return None


def trace_graph(model: nn.Module, mode: str | None = None) -> Graph:
    """The torch.fx graph of ``model`` (torch.nn's modules are leaves); raises :class:`TraceError`,
    naming the layer whose forward failed.

    ``mode``: ``"eval"`` or ``"train"`` traces the forward of that mode (``self.training`` is read
    while tracing; per-module modes come back after); None traces the model as it is. Buffers
    keep their values: fx runs code on buffers eagerly while tracing (timm's train-mode
    ``self.num_batches_tracked.add_(1)`` would count a step).
    """
    if mode not in (None, "eval", "train"):
        raise ValueError(f"mode must be None, 'eval' or 'train', got {mode!r}")
    tracer = _LeafTracer()
    context = {None: contextlib.nullcontext, "eval": evaluating, "train": training}[mode]
    try:
        with context(model), buffers_kept(model):
            return tracer.trace(model)
    except Exception as exc:  # fx raises many types; the user needs the model name, the layer and cause
        where = _failing_layer(tracer, model)
        in_mode = " in train mode" if mode == "train" else ""
        raise TraceError(
            f"cannot trace {type(model).__name__}{in_mode} with torch.fx{where}: {type(exc).__name__}: {exc}. "
            f"{_untraceable_advice(where)}"
        ) from exc


def _untraceable_advice(where: str) -> str:
    """What to do about a model torch.fx cannot trace: name the untraceable part as a boundary
    (the network in front of it is pruned whole), or prune one traceable submodule."""
    found = re.search(r"layer '([^']+)'", where)
    part = found.group(1) if found else "postprocess"
    return ("Data-dependent control flow cannot be traced. If that part is post-processing (anchors, NMS, "
            f"decoding), name it as a boundary: it then runs unchanged and the network in front of it is pruned "
            f"whole (PruneConfig(boundary=['{part}']), CLI --boundary {part}); or prune one traceable submodule "
            "(PruneConfig(submodule='backbone'), CLI --submodule backbone).")


def _failing_layer(tracer: Tracer, model: nn.Module) -> str:
    """`` in layer 'blocks.0.conv' (Conv2dSame)``: the innermost module whose forward was being
    traced when tracing failed (fx leaves its module stack as it was), or '' at the top level."""
    stack = getattr(tracer, "module_stack", None)
    if not stack:
        return ""
    path, module_type = next(reversed(stack.values()))
    if not path:
        return ""
    name = getattr(module_type, "__name__", None) or type(model.get_submodule(path)).__name__
    return f" in layer '{path}' ({name})"


def trace_modes(model: nn.Module) -> tuple[Graph, Graph | None]:
    """The eval-mode fx graph of ``model`` and its train-mode graph, or None when that one makes
    the same calls but for mode flags (the common case: one extra trace, compared node by node).
    The train-mode graph's mode flags read as in eval mode (:func:`with_eval_flags`): it is run
    for its shapes and channels."""
    eval_graph = trace_graph(model, "eval")
    train_graph = trace_graph(model, "train")
    return eval_graph, None if same_calls(eval_graph, train_graph) else with_eval_flags(train_graph)


def symbolic_trace(model: nn.Module) -> GraphModule:
    return GraphModule(model, trace_graph(model))


class _EagerExecutor:
    """Runs every node on fake (shapes only) or real tensors, counting its FLOPs."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], fake: bool):
        self.model = model
        self.modules = modules
        self.mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()

    def placeholder(self, value: Any) -> Any:
        return value

    def execute(self, node: Node, args: tuple, kwargs: dict) -> tuple[Any, float]:
        # FlopCounterMode resets on entry, so each node gets its own counter and the run sums them
        counter = flop_counter()
        with torch.no_grad(), self.mode, counter:
            if node.op == "get_attr":
                value: Any = self.model
                for part in str(node.target).split("."):
                    value = getattr(value, part)
            elif node.op == "call_module":
                value = self.modules[str(node.target)](*args, **kwargs)
            elif node.op == "call_function":
                value = node.target(*args, **kwargs)
            elif node.op == "call_method":
                self_obj, *rest = args
                value = getattr(self_obj, str(node.target))(*rest, **kwargs)
            else:
                raise TraceError(f"unexpected fx node op {node.op!r}")
        return value, float(counter.get_total_flops())


class _Run:
    """Executes a traced graph, keeping values and labels for every node.

    :meth:`run` runs the eval-mode graph (it counts the costs); :meth:`run_train` then runs the
    train-mode graph into the same members and coupling.
    """

    def __init__(self, model: nn.Module, graph: Graph, inputs: tuple[Any, ...], execution: str):

        self.model = model
        self.graph = graph
        self.inputs = inputs
        self.modules = dict(model.named_modules())
        self.execution = execution
        self.executor: Any = self._executor(count_flops=True)
        self.train_graph: Graph | None = None
        self.deployed = True  # False while the train-mode graph runs: its layers cost no MACs
        self.train_layers: list[LayerCost] = []
        self.tolerate = False  # skip train-mode nodes that fail (and keep the channels they read)
        self.cut = ""  # where the train-mode graph failed, when tolerated
        # the eval pass's values and labels by call_key, for the train pass to reuse (None: not kept)
        self.kept: dict[tuple, tuple[Any, Any]] | None = None
        self.counted_flops = 0.0  # FLOPs counted by FlopCounterMode, per batch
        self.counted_modelled_macs = 0.0  # the share of them the layer list models too (per sample)
        self.coupling = Coupling()
        self.members: list[Member] = []
        self.member_index: dict[tuple[str, str], int] = {}
        self.layers: list[LayerCost] = []
        self.seen_layer_params: set[str] = set()
        self.batch = 1
        self.node: Node | None = None

    def _executor(self, count_flops: bool) -> Any:
        if self.execution == "meta":
            return MetaExecutor(self.model, self.modules, count_flops=count_flops, flop_free=is_flop_free)
        return _EagerExecutor(self.model, self.modules, fake=self.execution == "fake")

    # -- helpers used by op handlers --------------------------------------------------------
    def where(self) -> str:
        node = self.node
        if node is None:
            return "?"
        mode = "" if self.deployed else " (train mode)"
        if node.op == "call_module":
            return f"layer '{node.target}' ({type(self.modules[node.target]).__name__}){mode}"
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        stack = node.meta.get("nn_module_stack")
        inside = f" in '{next(reversed(stack.values()))[0]}'" if stack else ""
        return f"node '{node.name}' ({target}){inside}{mode}"

    def add_member(self, module: str, kind: str, ids: torch.Tensor, tensors: tuple[tuple[str, int], ...],
                   groups: int = 1, group_mode: str = "", key: str | None = None) -> int:
        """Register a member; a module called twice shares one member and couples the calls.

        ``key`` tells apart several members of one kind on one module (one per parameter).
        """
        key = (module, key or kind)
        if key in self.member_index:
            index = self.member_index[key]
            self.coupling.union(self.members[index].ids, ids)
            unpaired = (self.members[index].ids >= 0) != (ids >= 0)
            if bool(unpaired.any()):
                self.coupling.block(torch.cat([self.members[index].ids, ids]), f"shared layer '{module}' sees unprunable channels")
            return index
        self.members.append(Member(module, kind, ids.clone(), tensors, groups, group_mode))
        self.member_index[key] = len(self.members) - 1
        return len(self.members) - 1

    def module_ids(self, module: str, key: str, n: int) -> torch.Tensor:
        """Ids of a module's member ``key``: allocated on first use, shared by later calls."""
        key = (module, key)
        if key in self.member_index:
            return self.members[self.member_index[key]].ids
        return self.coupling.allocate(n)

    def add_layer(self, **kw: Any) -> None:
        first = kw["module"] not in self.seen_layer_params
        self.seen_layer_params.add(kw["module"])
        if not self.deployed:
            # train mode only: the layer's parameters are the model's, its MACs are not the deployed model's
            if first:
                self.train_layers.append(LayerCost(**{**kw, "macs_per_unit": 0.0}))
            return
        if not first:
            kw["params_per_unit"] = 0
        self.layers.append(LayerCost(**kw))

    # -- execution --------------------------------------------------------------------------
    def run_train(self, graph: Graph, tolerate: bool = False) -> None:
        """Run the train-mode ``graph`` into the same members and coupling, counting no cost.

        Leaf modules stay in eval mode, and the functional calls' mode flags read as in eval
        mode (``trace_modes``): shapes do not depend on them, and train-mode BatchNorm would
        refuse the example input's one value per channel. The graph holds what train mode changes
        in the model's own code. Values are not the point: buffers the code updates in place on
        fake or real tensors (``num_batches_tracked.add_(1)``) are put back.

        ``tolerate``: a node that fails (the example input is too small for a train-only head:
        Inception-v3's auxiliary classifier needs 299x299) is skipped with everything downstream
        of it, and the channels they read are blocked, with the reason.
        """
        self.train_graph = graph
        self.deployed = False
        self.tolerate = tolerate
        self.executor = self._executor(count_flops=False)
        with buffers_kept(self.model) if self.execution != "meta" else contextlib.nullcontext():
            self.run(graph)
        self.kept = None

    def run(self, graph: Graph | None = None, keep: bool = False) -> None:
        """Execute ``graph`` (default: the eval-mode one) node by node, propagating labels.

        ``keep``: keep every node's value and labels by :func:`call_key` (meta and fake tensors
        hold no data), so that the train pass only runs the calls the eval graph does not make:
        a call with the same key computes the same from the same inputs. Its labels were
        propagated, and its members coupled, by the eval pass already.
        """
        graph = graph if graph is not None else self.graph
        kept = self.kept if not self.deployed else None
        keys: dict[tuple, tuple[Any, Any]] = {}
        # train pass: node -> the eval-mode node it repeats; eval pass: node -> the first node
        # with its key (a repeated call: x.size() twice), so that keys downstream agree
        counterpart: dict[Node, Node] = {}
        last_use: dict[Node, Node] = {}
        for node in graph.nodes:
            for arg in node.all_input_nodes:
                last_use[arg] = node
        values: dict[Node, Any] = {}
        labels: dict[Node, Any] = {}
        cut: set[Node] = set()  # train-mode nodes that failed, and every node downstream
        placeholders = iter(self.inputs)
        execute = self.executor.execute
        with torch.no_grad():
            for node in graph.nodes:
                self.node = node
                if kept is not None and node.op != "output":
                    key = call_key(node, counterpart)
                    if key in kept:
                        counterpart[node] = kept[key][0]
                        values[node], labels[node] = kept[key][1]
                        if node.op == "placeholder":
                            next(placeholders, None)  # the next placeholder reads the next input
                        continue
                if node.op == "placeholder":
                    try:
                        value = next(placeholders)
                    except StopIteration:
                        value = node.args[0] if node.args else None  # default argument
                    if isinstance(value, torch.Tensor) and not values and self.deployed:
                        self.batch = int(value.shape[0]) if value.dim() else 1
                    values[node], labels[node] = self.executor.placeholder(value), _ops.fresh_labels(value)
                elif node.op == "output":
                    _ops.block_structure(self, _ops.map_labels(node.args[0], labels), "model output (protected)")
                elif cut and any(arg in cut for arg in node.all_input_nodes):
                    self._cut(node, labels, cut)  # downstream of a train-mode node that failed
                else:
                    args = _ops.map_values(node.args, values)
                    kwargs = _ops.map_values(node.kwargs, values)
                    layers_before = len(self.layers)
                    try:
                        value, flops = execute(node, args, kwargs)
                    except Exception as exc:
                        if not self.tolerate:
                            raise
                        message = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                        self.cut = self.cut or f"{self.where()}: {type(exc).__name__}: {message}"
                        self._cut(node, labels, cut)
                        value = flops = None
                    if node not in cut:
                        values[node] = value
                        labels[node] = _ops.propagate(self, node, args, kwargs, labels, value)
                    if flops is not None and self.deployed:
                        self.counted_flops += flops
                        self.counted_modelled_macs += sum(layer.macs(layer.out_size, layer.in_size)
                                                          for layer in self.layers[layers_before:])
                if keep and node.op != "output":
                    key = call_key(node, counterpart)
                    if key in keys:
                        counterpart[node] = keys[key][0]
                    else:
                        keys[key] = (node, (values.get(node), labels.get(node)))
                    continue  # every value stays
                for arg in node.all_input_nodes:
                    if last_use.get(arg) is node:
                        values.pop(arg, None)
                        labels.pop(arg, None)
        self.node = None
        if keep:
            self.kept = keys

    def _cut(self, node: Node, labels: dict[Node, Any], cut: set[Node]) -> None:
        """Skip ``node`` (it failed, or uses a value that did): the channels it reads are kept, so
        what train mode runs past the failure sees the widths it always saw."""
        cut.add(node)
        for lab in _ops._labelled_inputs(node, labels):
            self.coupling.block(lab, f"the train-mode forward fails on the example input at {self.cut}")

    def other_macs(self) -> float:
        """MACs per sample that the layer list does not model (attention matmuls, functional convs ...)."""
        return max(self.counted_flops / 2 / max(self.batch, 1) - self.counted_modelled_macs, 0.0)


def build_dependency_graph(
    model: nn.Module,
    example_inputs: Any,
    exclude: Iterable[str] = (),
    allow_renormalization: bool = True,
    residual: str = "coupled",
) -> DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and find its channel groups.

    The eval-mode forward is traced, and the train-mode one too; when their fx graphs differ
    (a head called only in training) both are run into one coupling, so that the pruned model
    runs in either mode. Costs are the eval-mode ones (see the module docstring).

    Args:
        model: the network. It is run in eval mode under ``torch.no_grad`` (and traced in train
            mode); its per-module train/eval modes are restored afterwards and it is not modified.
        example_inputs: a tensor or tuple of positional inputs (a batch of 1 is enough).
        exclude: layer names or regular expressions (matched in full against module names);
            every channel of a matching layer is kept.
        allow_renormalization: allow removing channels normalised together by a LayerNorm
            (ConvNeXt); the result is then not identical to zeroing those channels.
        residual: ``"coupled"`` prunes residual-stream channels together with every conv that
            writes or reads them; ``"internal"`` keeps the residual stream at full width and
            prunes only the convs inside the blocks (as in Fig. 4 of "FALF ConvNets: Fatuous
            auxiliary loss based filter-pruning for efficient deep CNNs", and in ThiNet).

    Raises:
        TraceError: the model cannot be traced by torch.fx (in eval or train mode) or fails on
            the example input.
        ValueError: an ``exclude`` entry matches no layer, or ``residual`` is unknown.
    """
    if residual not in RESIDUAL_POLICIES:
        raise ValueError(f"residual must be one of {RESIDUAL_POLICIES}, got {residual!r}")
    inputs = as_tuple(example_inputs)
    exclude = list(exclude)
    patterns = _compile_excludes(exclude, [n for n, _ in model.named_modules() if n]) if exclude else []
    # the deployed (eval) behaviour, and the train-mode graph when it differs; per-module modes
    # come back after. Both graphs run with every module in eval mode (see _Run.run_train).
    graph, train_graph = trace_modes(model)
    with evaluating(model), attention_counted():
        # shapes are all the labels need: meta tensors first; fake tensors where an op needs a
        # tensor created in forward; real values for data-dependent ops (item(), nonzero ...)
        # the train-mode graph may fail where the eval one runs (a train-only head too big for the
        # example input): then it runs again where the eval graph ran, past the failing nodes
        eval_ran = None
        for execution in EXECUTIONS:
            try:
                run = _execute_graph(model, graph, inputs, execution, train_graph)
                break
            except _ExecutionFailed as failed:
                eval_ran = eval_ran or (execution if failed.train else None)
                if execution != EXECUTIONS[-1]:
                    continue
                if eval_ran is None:
                    raise TraceError(f"running the traced {type(model).__name__} failed at {failed.where}: "
                                     f"{type(failed.__cause__).__name__}: {failed.__cause__}") from failed.__cause__
                run = _execute_graph(model, graph, inputs, eval_ran, train_graph, tolerate=True)
    for pattern in patterns:
        for member in run.members:
            if pattern.fullmatch(member.module):
                run.coupling.block(member.ids, f"excluded by user ({pattern.pattern})")
    return _finish(model, run, allow_renormalization, residual)


EXECUTIONS = ("meta", "fake", "real")


class _ExecutionFailed(Exception):
    def __init__(self, where: str, train: bool = False):
        super().__init__(where)
        self.where = where
        self.train = train


def _execute_graph(model: nn.Module, graph: Graph, inputs: tuple[Any, ...], execution: str,
                   train_graph: Graph | None = None, tolerate: bool = False) -> _Run:
    """Run the traced graph (then the train-mode one, if any) on ``execution`` tensors (labels are
    computed outside any mode)."""
    run = _Run(model, graph, inputs, execution)
    try:
        with _quiet_fake_tensor_log() if execution == "fake" else contextlib.nullcontext():
            # real values are not kept for the train pass (memory): it runs every call again
            run.run(keep=train_graph is not None and execution != "real")
            if train_graph is not None:
                run.run_train(train_graph, tolerate)
    except TraceError:
        raise
    except Exception as exc:
        raise _ExecutionFailed(run.where(), train=not run.deployed) from exc
    return run


@contextlib.contextmanager
def _quiet_fake_tensor_log() -> Any:
    """Mute torch's fake-tensor logger: it logs each failing meta kernel with a traceback at ERROR level,
    and a failure here is expected and handled (the next execution decides, or a TraceError names it)."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _compile_excludes(exclude: Iterable[str], names: list[str]) -> list[re.Pattern[str]]:
    patterns = []
    for entry in exclude:
        try:
            pattern = re.compile(entry)
        except re.error as exc:
            raise ValueError(f"exclude entry {entry!r} is not a valid regular expression: {exc}") from exc
        if not any(pattern.fullmatch(n) for n in names):
            close = [n for n in names if entry.split(".")[-1] in n][:5]
            hint = f"; similar layers: {close}" if close else ""
            raise ValueError(f"exclude entry {entry!r} matches no layer of the model{hint}")
        patterns.append(pattern)
    return patterns


def _finish(model: nn.Module, run: _Run, allow_renormalization: bool, residual_policy: str = "coupled"
            ) -> DependencyGraph:
    coupling = run.coupling
    n = max(coupling.next_id, 1)
    if coupling.edges:
        edges = torch.cat(coupling.edges, dim=1).numpy()
        adj = coo_matrix((np.ones(edges.shape[1], dtype=bool), (edges[0], edges[1])), shape=(n, n))
    else:
        adj = coo_matrix((n, n), dtype=bool)
    num_atoms, atom_of_id = connected_components(adj, directed=False)
    atom_of_id = atom_of_id.astype(np.int64)

    blocked = np.zeros(num_atoms, dtype=bool)
    reason: dict[int, str] = {}
    for ids, why in coupling.blocks:  # the first reason recorded for an atom is the one reported
        atoms = np.unique(atom_of_id[ids.numpy()])
        new = atoms[~blocked[atoms]]
        blocked[new] = True
        reason.update(dict.fromkeys(new.tolist(), why))
    renorm = np.zeros(num_atoms, dtype=bool)
    for ids in coupling.renormalized:
        renorm[atom_of_id[ids.numpy()]] = True
    if not allow_renormalization:
        new = np.flatnonzero(renorm & ~blocked)
        blocked[new] = True
        why = "normalised by a LayerNorm over channels (allow_renormalization=False)"
        reason.update(dict.fromkeys(new.tolist(), why))
    residual = np.zeros(num_atoms, dtype=bool)
    for ids in coupling.merged:
        ids = ids.numpy()
        residual[atom_of_id[ids[ids >= 0]]] = True
    if residual_policy == "internal":
        for atom in np.flatnonzero(residual & ~blocked):
            blocked[atom] = True
            reason[int(atom)] = "residual stream (residual='internal' keeps its width)"
    producer = np.zeros(num_atoms, dtype=bool)
    for member in run.members:
        if member.kind in PRODUCER_KINDS:
            ids = member.ids.numpy()
            producer[atom_of_id[ids[ids >= 0]]] = True

    modelled_params, per_index = _modelled_params(run)
    unsupported: dict[str, int] = {}
    for atom, why in reason.items():
        if producer[atom]:
            unsupported[why] = unsupported.get(why, 0) + 1
    other_macs = run.other_macs()
    macs = sum(layer.macs(layer.out_size, layer.in_size) for layer in run.layers) + other_macs
    total_params = sum(p.numel() for p in {id(p): p for m in run.modules.values()
                                           for p in m._parameters.values() if p is not None}.values())
    graph = DependencyGraph(
        members=run.members, atom_of_id=atom_of_id, num_atoms=num_atoms, blocked=blocked,
        block_reason=reason, renormalized=renorm, producer=producer, groups=[], layers=run.layers,
        macs=macs, params=total_params, other_macs=other_macs,
        other_params=total_params - modelled_params, batch_size=run.batch, param_per_index=per_index,
        unsupported=unsupported, residual=residual, traced=run.graph, execution=run.execution,
        traced_train=run.train_graph, train_layers=run.train_layers, train_cut=run.cut,
    )
    graph.groups = _groups(graph)
    return graph


def _modelled_params(run: _Run) -> tuple[int, list[int]]:
    """Parameters the cost model tracks, and the per-index parameter count of 1-D members."""
    total = sum(layer.params(layer.out_size, layer.in_size) for layer in (*run.layers, *run.train_layers))
    per_index = []
    for member in run.members:
        count = 0
        if member.kind in ("bn", "norm", "param"):
            module = run.modules[member.module]
            for name, axis in member.tensors:
                tensor = getattr(module, name)
                if isinstance(tensor, nn.Parameter):
                    count += tensor.numel() // tensor.shape[axis]
        per_index.append(count)
        total += count * member.size
    return total, per_index


def _groups(graph: DependencyGraph) -> list[ChannelGroup]:
    """Connected components of the member-atom incidence graph, in order of their first member."""
    n_members = len(graph.members)
    if not n_members:
        return []
    flat_atoms, flat_member = graph._flat_atoms, graph._flat_member
    ok = flat_atoms >= 0
    size = n_members + graph.num_atoms
    adj = coo_matrix((np.ones(int(ok.sum()), dtype=bool), (flat_member[ok], flat_atoms[ok] + n_members)),
                     shape=(size, size))
    _, comp = connected_components(adj, directed=False)
    member_comp, atom_comp = comp[:n_members], comp[n_members:]
    keys, first = np.unique(member_comp, return_index=True)
    n_groups = keys.size
    group_of_comp = np.full(int(comp.max()) + 1, -1, dtype=np.int64)
    group_of_comp[keys[np.argsort(first)]] = np.arange(n_groups)
    atom_group = group_of_comp[atom_comp]
    member_lists = _split_by(group_of_comp[member_comp], n_groups)
    atom_lists = _split_by(atom_group, n_groups)
    removable = graph.producer & ~graph.blocked
    removable_lists = _split_by(np.where(removable, atom_group, -1), n_groups)
    reasons: list[set[str]] = [set() for _ in range(n_groups)]
    for atom, why in graph.block_reason.items():
        g = atom_group[atom]
        if g >= 0:
            reasons[g].add(why)
    return [ChannelGroup(index, member_lists[index].tolist(), atom_lists[index], removable_lists[index],
                         sorted(reasons[index])) for index in range(n_groups)]


def _split_by(group: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Indices of ``group`` (-1 = none), split per group value 0..n_groups-1, each ascending."""
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group[group >= 0], minlength=n_groups)
    skip = int((group < 0).sum())
    return np.split(order[skip:].astype(np.int64), np.cumsum(counts)[:-1])
