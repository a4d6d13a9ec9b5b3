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
from compressor.graph._modes import evaluating
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


def trace_graph(model: nn.Module) -> Graph:
    """The torch.fx graph of ``model`` (torch.nn's modules are leaves); raises :class:`TraceError`."""
    try:
        return _LeafTracer().trace(model)
    except Exception as exc:  # fx raises many types; the user needs the model name and cause
        raise TraceError(
            f"cannot trace {type(model).__name__} with torch.fx: {type(exc).__name__}: {exc}. "
            "Models with data-dependent control flow cannot be pruned as a whole; prune a "
            "traceable submodule instead (PruneConfig(submodule='backbone'), CLI --submodule backbone)."
        ) from exc


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
    """Executes a traced graph, keeping values and labels for every node."""

    def __init__(self, model: nn.Module, graph: Graph, inputs: tuple[Any, ...], execution: str):

        self.model = model
        self.graph = graph
        self.inputs = inputs
        self.modules = dict(model.named_modules())
        self.execution = execution
        if execution == "meta":
            self.executor: Any = MetaExecutor(model, self.modules, count_flops=True, flop_free=is_flop_free)
        else:
            self.executor = _EagerExecutor(model, self.modules, fake=execution == "fake")
        self.counted_flops = 0.0  # FLOPs counted by FlopCounterMode, per batch
        self.counted_modelled_macs = 0.0  # the share of them the layer list models too (per sample)
        self.coupling = Coupling()
        self.members: list[Member] = []
        self.member_index: dict[tuple[str, str], int] = {}
        self.layers: list[LayerCost] = []
        self.seen_layer_params: set[str] = set()
        self.batch = 1
        self.node: Node | None = None

    # -- helpers used by op handlers --------------------------------------------------------
    def where(self) -> str:
        node = self.node
        if node is None:
            return "?"
        if node.op == "call_module":
            return f"layer '{node.target}' ({type(self.modules[node.target]).__name__})"
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        stack = node.meta.get("nn_module_stack")
        inside = f" in '{next(reversed(stack.values()))[0]}'" if stack else ""
        return f"node '{node.name}' ({target}){inside}"

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
        if not first:
            kw["params_per_unit"] = 0
        self.layers.append(LayerCost(**kw))

    # -- execution --------------------------------------------------------------------------
    def run(self) -> None:
        last_use: dict[Node, Node] = {}
        for node in self.graph.nodes:
            for arg in node.all_input_nodes:
                last_use[arg] = node
        values: dict[Node, Any] = {}
        labels: dict[Node, Any] = {}
        placeholders = iter(self.inputs)
        execute = self.executor.execute
        with torch.no_grad():
            for node in self.graph.nodes:
                self.node = node
                if node.op == "placeholder":
                    try:
                        value = next(placeholders)
                    except StopIteration:
                        value = node.args[0] if node.args else None  # default argument
                    if isinstance(value, torch.Tensor) and not values:
                        self.batch = int(value.shape[0]) if value.dim() else 1
                    values[node], labels[node] = self.executor.placeholder(value), _ops.fresh_labels(value)
                elif node.op == "output":
                    _ops.block_structure(self, _ops.map_labels(node.args[0], labels), "model output (protected)")
                else:
                    args = _ops.map_values(node.args, values)
                    kwargs = _ops.map_values(node.kwargs, values)
                    layers_before = len(self.layers)
                    value, flops = execute(node, args, kwargs)
                    values[node] = value
                    labels[node] = _ops.propagate(self, node, args, kwargs, labels, value)
                    if flops is not None:
                        self.counted_flops += flops
                        self.counted_modelled_macs += sum(layer.macs(layer.out_size, layer.in_size)
                                                          for layer in self.layers[layers_before:])
                for arg in node.all_input_nodes:
                    if last_use.get(arg) is node:
                        values.pop(arg, None)
                        labels.pop(arg, None)
        self.node = None

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

    Args:
        model: the network. It is run in eval mode under ``torch.no_grad``; its train/eval
            mode is restored afterwards and it is not modified.
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
        TraceError: the model cannot be traced by torch.fx or fails on the example input.
        ValueError: an ``exclude`` entry matches no layer, or ``residual`` is unknown.
    """
    if residual not in RESIDUAL_POLICIES:
        raise ValueError(f"residual must be one of {RESIDUAL_POLICIES}, got {residual!r}")
    inputs = as_tuple(example_inputs)
    exclude = list(exclude)
    patterns = _compile_excludes(exclude, [n for n, _ in model.named_modules() if n]) if exclude else []
    # trace the deployed (eval) behaviour; per-module modes come back after
    with evaluating(model), attention_counted():
        graph = trace_graph(model)
        # shapes are all the labels need: meta tensors first; fake tensors where an op needs a
        # tensor created in forward; real values for data-dependent ops (item(), nonzero ...)
        for execution in EXECUTIONS:
            try:
                run = _execute_graph(model, graph, inputs, execution)
                break
            except _ExecutionFailed as failed:
                if execution == EXECUTIONS[-1]:
                    raise TraceError(f"running the traced {type(model).__name__} failed at {failed.where}: "
                                     f"{type(failed.__cause__).__name__}: {failed.__cause__}") from failed.__cause__
    for pattern in patterns:
        for member in run.members:
            if pattern.fullmatch(member.module):
                run.coupling.block(member.ids, f"excluded by user ({pattern.pattern})")
    return _finish(model, run, allow_renormalization, residual)


EXECUTIONS = ("meta", "fake", "real")


class _ExecutionFailed(Exception):
    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


def _execute_graph(model: nn.Module, graph: Graph, inputs: tuple[Any, ...], execution: str) -> _Run:
    """Run the traced graph on ``execution`` tensors (labels are computed outside any mode)."""
    run = _Run(model, graph, inputs, execution)
    try:
        with _quiet_fake_tensor_log() if execution == "fake" else contextlib.nullcontext():
            run.run()
    except TraceError:
        raise
    except Exception as exc:
        raise _ExecutionFailed(run.where()) from exc
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
    )
    graph.groups = _groups(graph)
    return graph


def _modelled_params(run: _Run) -> tuple[int, list[int]]:
    """Parameters the cost model tracks, and the per-index parameter count of 1-D members."""
    total = sum(layer.params(layer.out_size, layer.in_size) for layer in run.layers)
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
