"""Experiment grids (`just sweep`): the paper's runs planned together, sharing their caches (docs/sweep.md)."""
