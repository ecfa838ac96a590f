"""`diffmesh bench`: multi-device scenarios with JSON output (figures, never pass/fail)."""
