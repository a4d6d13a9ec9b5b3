"""Placeholder: filled in by the criteria work of issue 6."""
