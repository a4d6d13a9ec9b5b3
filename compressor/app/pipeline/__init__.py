"""Config-driven pipelines: one YAML file from model to report (``compressor run pipeline.yaml``).

``_core`` runs the steps, ``_steps`` holds the built-in ones, ``_report`` writes the summary.
"""
