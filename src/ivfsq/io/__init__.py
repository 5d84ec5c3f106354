"""On-disk containers."""
