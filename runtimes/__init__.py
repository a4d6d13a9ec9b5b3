"""Runtime adapters (exported file -> running session). Filled in by the export issue."""
