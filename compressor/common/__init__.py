"""Torch-free foundation every layer builds on: the error family, atomic file writes and output
directories, the config base and the registry. ``runtimes`` and ``benchmarks`` use it on target
devices without torch, so nothing here imports torch or another compressor subpackage.
"""
