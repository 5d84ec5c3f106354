"""Data helpers behind :mod:`ivfsq.datasets`: synthetic data, exact ground
truth and recall, loaders."""
