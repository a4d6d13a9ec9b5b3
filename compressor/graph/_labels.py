"""Channel labels: which pruning atom every element of a traced tensor belongs to.

Every traced tensor carries an int64 *label tensor* of the same shape. An element's label is
the id of the channel slot it came from (a conv output channel, a Linear output feature, an
element of a channel-wise parameter), or -1 when it carries no prunable channel (the model
input, constants, outputs of ops we do not understand).

Label tensors are almost always constant along every dim but one (the channel dim), so they
are stored as stride-0 expanded views of a small *core*: a (1, C, 1, 1) vector costs C int64s
whatever the spatial size. Data-movement ops (view, permute, cat, chunk, getitem ...) are
applied to the label tensor itself, so the labels move exactly where the data moves; that is
what makes channel shuffle, flatten -> Linear and window partitions come out right.

Coupling is recorded as *edges* between ids (the two ids must be removed together), and
*blocks* (the id can never be removed, with the reason). Connected components of the edge
graph, computed once at the end, are the pruning atoms.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

Labels = torch.Tensor  # int64, same shape as the traced tensor, -1 = no channel


def core(lab: Labels) -> Labels:
    """Narrow every stride-0 (broadcast) dim to size 1; the result is small and contiguous."""
    out = lab
    for d in range(lab.dim()):
        if lab.stride(d) == 0 and lab.size(d) > 1:
            out = out.narrow(d, 0, 1)
    return out


def normalize(lab: Labels) -> Labels:
    """Re-express ``lab`` as an expanded view of its smallest core (detects constant dims)."""
    c = core(lab)
    for d in range(c.dim()):
        if c.size(d) > 1 and bool((c == c.narrow(d, 0, 1)).all()):
            c = c.narrow(d, 0, 1)
    return c.contiguous().expand(lab.shape)


def varying_dims(lab: Labels) -> list[int]:
    """Dims along which labels change. Assumes ``lab`` is normalized."""
    return [d for d in range(lab.dim()) if lab.size(d) > 1 and lab.stride(d) != 0]


def channel_vector(lab: Labels, dim: int) -> Labels:
    """The labels along ``dim`` when they vary along no other dim (a 1-D tensor)."""
    c = core(lab)
    index = [0] * c.dim()
    index[dim] = slice(None)
    vec = c[tuple(index)]
    return vec.expand(lab.size(dim)).contiguous() if vec.numel() == 1 else vec.contiguous()


def from_vector(vec: Labels, shape: torch.Size | tuple[int, ...], dim: int) -> Labels:
    """Labels that are ``vec`` along ``dim`` and constant along every other dim."""
    view = [1] * len(shape)
    view[dim] = -1
    return vec.view(view).expand(tuple(shape))


def unlabelled(shape: torch.Size | tuple[int, ...]) -> Labels:
    return torch.full((1,) * len(shape), -1, dtype=torch.long).expand(tuple(shape))


def has_labels(lab: Labels | None) -> bool:
    return lab is not None and bool((core(lab) >= 0).any())


@dataclass
class Coupling:
    """Edges, blocks and the id allocator shared by one trace."""

    next_id: int = 0
    edges: list[torch.Tensor] = field(default_factory=list)  # each (2, E) int64
    blocks: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    renormalized: list[torch.Tensor] = field(default_factory=list)  # ids behind a LayerNorm
    merged: list[torch.Tensor] = field(default_factory=list)  # ids where two tensors meet (residual adds)

    def allocate(self, n: int) -> torch.Tensor:
        ids = torch.arange(self.next_id, self.next_id + n, dtype=torch.long)
        self.next_id += n
        return ids

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Couple ``a[i]`` with ``b[i]`` wherever both are labelled; block a label paired with -1."""
        a, b = torch.broadcast_tensors(a, b)
        a, b = a.reshape(-1), b.reshape(-1)
        both = (a >= 0) & (b >= 0) & (a != b)
        if bool(both.any()):
            pairs = torch.stack([a[both], b[both]])
            self.edges.append(torch.unique(pairs, dim=1))

    def block(self, lab: Labels | torch.Tensor | None, reason: str) -> None:
        if lab is None:
            return
        ids = core(lab).reshape(-1) if lab.dim() else lab.reshape(-1)
        ids = torch.unique(ids[ids >= 0])
        if ids.numel():
            self.blocks.append((ids, reason))

    def union_within_rows(self, ids: torch.Tensor) -> None:
        """Couple every label of each row of a 2-D ``ids`` tensor (one row = one atom)."""
        if ids.numel() and ids.size(1) > 1:
            self.union(ids[:, :1].expand_as(ids), ids)

    def couple_positions(self, lab: Labels, dim: int, parts: int) -> bool:
        """Couple position i of each of ``parts`` equal slices of ``lab`` along ``dim``.

        This is what keeps equal-size chunks (``chunk``, a group axis of a view) consistent
        after pruning: each slice loses the same positions. Returns False if not divisible.
        """
        size = lab.size(dim)
        if size % parts:
            return False
        c = core(lab)
        if c.size(dim) == 1:  # labels do not vary along dim: nothing to couple
            return True
        shape = list(c.shape)
        shape[dim : dim + 1] = [parts, size // parts]
        split = c.reshape(shape)
        first = split.narrow(dim, 0, 1)
        self.union(first.expand_as(split), split)
        return True


def binary_union(coupling: Coupling, labs: list[Labels | None], shape: torch.Size, where: str) -> Labels:
    """Labels of an element-wise op over broadcastable inputs (add, mul, where ...).

    Operands that meet element by element are coupled. An operand broadcast along a dim on
    which another operand's labels vary (a (N,1,H,W) attention map times (N,C,H,W) features)
    is not coupled: its own labels are blocked instead, since one of its elements meets many
    channels. A labelled element that meets an unlabelled, non-broadcast element (a constant
    tensor of the same channel extent) is blocked, since the other side cannot shrink.
    """
    present = [lab for lab in labs if lab is not None]
    if not present:
        return unlabelled(shape)
    nd = len(shape)
    full = [lab.view((1,) * (nd - lab.dim()) + tuple(lab.shape)) for lab in present]
    vary = set()
    for lab in full:
        vary.update(d for d in varying_dims(normalize(lab)))
    kept: list[Labels] = []
    for lab in full:
        if any(lab.size(d) == 1 and shape[d] > 1 for d in vary):
            coupling.block(lab, f"broadcast across channels at {where}")
            continue
        kept.append(lab.expand(shape))
    if not kept:
        return unlabelled(shape)
    # only dims that vary somewhere matter: narrow the rest away before pairing
    cores = []
    for lab in kept:
        c = lab
        for d in range(nd):
            if d not in vary and c.size(d) > 1:
                c = c.narrow(d, 0, 1)
        cores.append(c)
    out = cores[0]
    if len(cores) > 1:  # two feature maps meet element by element: a residual stream (or a gate)
        coupling.merged.extend(c.reshape(-1) for c in cores)
    for other in cores[1:]:
        coupling.union(out, other)
        mismatch = ((out >= 0) & (other < 0)) | ((out < 0) & (other >= 0))
        if bool(mismatch.any()):
            coupling.block(torch.where(mismatch, torch.maximum(out, other), -1), f"channels meet an unprunable tensor at {where}")
        out = torch.where(out >= 0, out, other)
    return normalize(out.expand(shape))
