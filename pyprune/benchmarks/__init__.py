"""Benchmarks shipped with pyprune: ``pyprune bench <name>`` runs them and
prints a comparison table against the PyTorch anchor measured in the same run."""
