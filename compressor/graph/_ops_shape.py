"""Data-movement ops: the label tensor is moved by the very same op as the data.

Literal integers are the danger: a shape that was hard-coded when the model was written does
not shrink with the channels. Each handler checks that what it moved stays valid after any
removal, and either couples positions so that it does (a ``chunk`` or a ``view`` that splits
channels into a literal number of groups, as in ShuffleNetV2's channel shuffle) or blocks.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.fx import Node

from compressor.graph._labels import (
    Labels, binary_union, channel_vector, has_labels, normalize, unlabelled, varying_dims,
)
from compressor.graph._ops import SizeOf, _arg, _lab, _node_arg, fresh_labels, shape_only


def _dims_of_index(index: Any, ndim: int) -> list[tuple[int, Any]]:
    """(input dim, index item) pairs of a ``__getitem__`` index."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    out, d = [], 0
    for it in items:
        if it is None:
            continue
        if it is Ellipsis:
            d += ndim - consumed
            continue
        out.append((d, it))
        d += 1
    return out


def _is_full_slice(item: Any, size: int) -> bool:
    if not isinstance(item, slice):
        return False
    start, stop, step = item.indices(size) if all(
        isinstance(v, (int, type(None))) for v in (item.start, item.stop, item.step)) else (None, None, None)
    return start == 0 and stop == size and step == 1


def getitem(run, node, args, kwargs, labels, value):
    source, index = args[0], args[1]
    src_lab = labels.get(node.args[0]) if isinstance(node.args[0], Node) else None
    if not isinstance(source, torch.Tensor):
        # tuple/list/dict of results (chunk, split, multi-output modules)
        if src_lab is None:
            return fresh_labels(value)
        try:
            return src_lab[index]
        except (KeyError, IndexError, TypeError):
            return fresh_labels(value)
    if src_lab is None:
        return fresh_labels(value)
    lab = normalize(src_lab)
    if shape_only(index):  # a tensor index whose values this run does not have: labels cannot follow
        if has_labels(lab):
            run.coupling.block(lab, f"indexing with a tensor at {run.where()}")
        return unlabelled(value.shape)
    vary = set(varying_dims(lab))
    for d, item in _dims_of_index(index, source.dim()):
        if d in vary and not _is_full_slice(item, source.size(d)):
            run.coupling.block(lab, f"indexing a channel dim at {run.where()}")
            break
    try:
        return normalize(lab[index])
    except Exception:  # exotic indices (boolean masks ...): the data moved, labels cannot follow
        run.coupling.block(lab, f"unsupported index at {run.where()}")
        return unlabelled(value.shape)


def _literal_positions(shape_args: list[Any]) -> list[bool]:
    """Which entries of a shape were literal ints (not -1, not computed from a size)."""
    return [isinstance(s, int) and not isinstance(s, bool) and s != -1 for s in shape_args]


def _shape_args(node: Node, first: int) -> list[Any]:
    rest = list(node.args[first:])
    if not rest:
        rest = [node.kwargs.get("shape") or node.kwargs.get("size")]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        return list(rest[0])
    return rest


def _check_literal_dims(run, out: Labels, literal: list[bool], what: str) -> None:
    """A hard-coded dim along which channels vary must not shrink.

    If every channel-carrying dim is hard-coded (``x.view(n, 512, -1)``) the channels are
    blocked. If only some are (``x.view(n, groups, -1, h, w)``: a literal group count next
    to a computed group width), position i of every group is coupled, so that each group
    loses the same positions and the literal stays valid.
    """
    vary = varying_dims(out)
    lit = [d for d in vary if d < len(literal) and literal[d]]
    if not lit:
        return
    if len(lit) == len(vary):
        run.coupling.block(out, f"hard-coded channel count in {what} at {run.where()}")
        return
    for d in lit:
        run.coupling.couple_positions(out, d, out.size(d))


def reshape(run, node, args, kwargs, labels, value, first: int = 1):
    src = _lab(labels, node.args[0])
    if src is None:
        return fresh_labels(value)
    out = normalize(src.reshape(value.shape))
    shape_args = _shape_args(node, first)
    if len(shape_args) == value.dim():
        _check_literal_dims(run, out, _literal_positions(shape_args), "reshape")
        _check_read_sizes(run, out, [labels.get(a) if isinstance(a, Node) else None for a in shape_args])
    elif has_labels(out):
        run.coupling.block(out, f"unreadable reshape arguments at {run.where()}")
    return out


def _check_read_sizes(run, out: Labels, sizes: list[Any]) -> None:
    """A dim reshaped to a size read from a tensor (``x.shape[i]``) shrinks with that tensor's dim.

    MaxViT's attention reshapes its output to ``(B, G, P, D)`` with ``D`` read from its input: the
    output's channels are then coupled, position by position, with the input's, so that both
    keep as many (unless they are the same channels, maybe shuffled); where the output's channels cannot shrink (its heads are hard-coded), the
    input's are blocked, and the other way round.
    """
    vary = varying_dims(out)
    for d, size in enumerate(sizes):
        if not isinstance(size, SizeOf) or size.ids is None or size.ids.numel() != out.size(d):
            continue
        read = size.ids
        if d not in vary:
            if bool((read >= 0).any()):
                run.coupling.block(read, f"reshape of unprunable channels to a size read from prunable ones at {run.where()}")
            continue
        if len(vary) != 1:
            continue  # channels along several dims: the literal checks above decide
        mine = channel_vector(out, d)
        if torch.equal(mine.sort().values, read.sort().values):
            continue  # the same channels (in another order, after a channel shuffle): they shrink alike
        run.coupling.union(mine, read)
        unpaired = (mine >= 0) != (read >= 0)
        if bool(unpaired.any()):
            run.coupling.block(torch.where(unpaired, torch.maximum(mine, read), -1),
                               f"reshape of channels to a size read from an unprunable dim at {run.where()}")


def torch_reshape(run, node, args, kwargs, labels, value):
    return reshape(run, node, args, kwargs, labels, value, first=1)


def unflatten(run, node, args, kwargs, labels, value):
    src = _lab(labels, node.args[0])
    if src is None:
        return fresh_labels(value)
    dim = _arg(args, kwargs, 1, "dim") % args[0].dim()
    sizes = _node_arg(node, 2, "sizes")
    out = normalize(src.reshape(value.shape))
    literal = [False] * value.dim()
    for i, s in enumerate(sizes if isinstance(sizes, (tuple, list)) else []):
        literal[dim + i] = isinstance(s, int) and s != -1
    _check_literal_dims(run, out, literal, "unflatten")
    return out


def unflatten_module(run, node, module, args, kwargs, labels, value):
    src = _lab(labels, node.args[0])
    if src is None:
        return fresh_labels(value)
    out = normalize(src.reshape(value.shape))
    literal = [False] * value.dim()
    dim = module.dim % args[0].dim()
    for i, s in enumerate(module.unflattened_size):
        literal[dim + i] = s != -1
    _check_literal_dims(run, out, literal, "Unflatten")
    return out


def same_op(run, node, args, kwargs, labels, value):
    """Pure data movement with no literal sizes on channel dims: apply it to the labels."""
    src = _lab(labels, node.args[0])
    if src is None or not isinstance(value, torch.Tensor):
        return fresh_labels(value)
    if shape_only((args[1:], kwargs)):
        return _tensor_argument(run, src, value)
    if node.op == "call_method":
        out = getattr(src, str(node.target))(*args[1:], **kwargs)
    else:
        out = node.target(src, *args[1:], **kwargs)
    return normalize(out) if isinstance(out, torch.Tensor) else out


def _tensor_argument(run, lab: Labels, value):
    """An op whose tensor arguments have no values in this run: labels cannot follow the data."""
    if has_labels(lab):
        run.coupling.block(lab, f"tensor argument at {run.where()}")
    return fresh_labels(value)


def cast(run, node, args, kwargs, labels, value):
    """to(), float(), type_as(): same labels, same shape."""
    src = _lab(labels, node.args[0])
    return src if src is not None else fresh_labels(value)


def flatten_module(run, node, module, args, kwargs, labels, value):
    src = _lab(labels, node.args[0])
    if src is None:
        return fresh_labels(value)
    return normalize(src.flatten(module.start_dim, module.end_dim))


def expand(run, node, args, kwargs, labels, value):
    src = _lab(labels, node.args[0])
    if src is None:
        return fresh_labels(value)
    return normalize(src.expand(value.shape))


def along_dims(run, node, args, kwargs, labels, value, dims: set[int], what: str):
    """roll/flip/split/narrow/select/unbind/repeat: fine unless ``dims`` carry channels."""
    src = _lab(labels, node.args[0])
    if src is None:
        return fresh_labels(value)
    lab = normalize(src)
    if shape_only((args[1:], kwargs)):
        return _tensor_argument(run, lab, value)
    if set(varying_dims(lab)) & dims:
        run.coupling.block(lab, f"{what} along a channel dim at {run.where()}")
    if node.op == "call_method":
        out = getattr(lab, str(node.target))(*args[1:], **kwargs)
    else:
        out = node.target(lab, *args[1:], **kwargs)
    if isinstance(out, torch.Tensor):
        return normalize(out)
    return type(out)(normalize(o) for o in out)


def _dim(args, kwargs, index: int, ndim: int, default: int = 0) -> int:
    dim = _arg(args, kwargs, index, "dim", default)
    return dim % ndim


def roll(run, node, args, kwargs, labels, value):
    dims = _arg(args, kwargs, 2, "dims")
    ndim = args[0].dim()
    touched = set(range(ndim)) if dims is None else {d % ndim for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    return along_dims(run, node, args, kwargs, labels, value, touched, "roll")


def flip(run, node, args, kwargs, labels, value):
    dims = _arg(args, kwargs, 1, "dims")
    ndim = args[0].dim()
    dims = [dims] if isinstance(dims, int) else list(dims)
    return along_dims(run, node, args, kwargs, labels, value, {d % ndim for d in dims}, "flip")


def split(run, node, args, kwargs, labels, value):
    return along_dims(run, node, args, kwargs, labels, value, {_dim(args, kwargs, 2, args[0].dim())}, "split")


def unbind_like(run, node, args, kwargs, labels, value):
    return along_dims(run, node, args, kwargs, labels, value, {_dim(args, kwargs, 1, args[0].dim())}, str(node.target))


def repeat(run, node, args, kwargs, labels, value):
    sizes = args[1:] if not (len(args) == 2 and isinstance(args[1], (tuple, list))) else args[1]
    ndim = len(sizes)
    offset = ndim - args[0].dim()
    touched = {i - offset for i, s in enumerate(sizes) if s != 1 and i >= offset}
    return along_dims(run, node, args, kwargs, labels, value, touched, "repeat")


def chunk(run, node, args, kwargs, labels, value):
    src = _lab(labels, node.args[0])
    if src is None:
        return fresh_labels(value)
    chunks = _arg(args, kwargs, 1, "chunks")
    dim = _dim(args, kwargs, 2, args[0].dim())
    lab = normalize(src)
    if dim in varying_dims(lab):
        if len(value) != chunks or not run.coupling.couple_positions(lab, dim, chunks):
            run.coupling.block(lab, f"chunk into unequal parts along a channel dim at {run.where()}")
    return tuple(normalize(p) for p in lab.chunk(chunks, dim))


def cat(run, node, args, kwargs, labels, value):
    tensors = args[0]
    dim = _arg(args, kwargs, 1, "dim", 0) % value.dim()
    labs = [_lab(labels, n) for n in node.args[0]]
    labs = [normalize(l) if l is not None else unlabelled(t.shape) for l, t in zip(labs, tensors)]
    vary = set().union(*(varying_dims(l) for l in labs))
    if dim in vary:
        cores = []
        for lab in labs:
            c = lab
            for d in range(value.dim()):
                if d != dim and d not in vary and c.size(d) > 1:
                    c = c.narrow(d, 0, 1)
            cores.append(c)
        shape = [max(c.size(d) for c in cores) if d != dim else -1 for d in range(value.dim())]
        cores = [c.expand([s if d != dim else c.size(d) for d, s in enumerate(shape)]) for c in cores]
        return normalize(torch.cat(cores, dim).expand(value.shape))
    # concatenation along a non-channel dim (tokens, batch): the inputs' channels meet
    narrowed = [l.narrow(dim, 0, 1) for l in labs]
    shape = list(value.shape)
    shape[dim] = 1
    out = binary_union(run.coupling, narrowed, torch.Size(shape), run.where())
    return out.expand(value.shape)


def stack(run, node, args, kwargs, labels, value):
    tensors = args[0]
    dim = _arg(args, kwargs, 1, "dim", 0) % value.dim()
    labs = [_lab(labels, n) for n in node.args[0]]
    labs = [l if l is not None else unlabelled(t.shape) for l, t in zip(labs, tensors)]
    out = binary_union(run.coupling, labs, tensors[0].shape, run.where())
    return normalize(out.unsqueeze(dim).expand(value.shape))

