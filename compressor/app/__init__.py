"""Application layer, on top of the library: the command line, config-driven pipelines, pruning
to a latency budget measured on a runtime, the speed guard, bundle creation and evaluation on
runtimes. It may import every layer below; nothing below imports it.
"""
