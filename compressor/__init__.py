"""Physical structured pruning for CNNs: dependency graph, criteria, surgery, cost model."""
from ._graph import ChannelGroup, DependencyGraph, Member, build_dependency_graph
from .errors import CompressorError, ModelFormatError, TraceError, UnprunableModelError, UnreachableTargetError
