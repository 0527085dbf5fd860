"""Datasets and the DataModule over prepared (memory-mapped) arrays."""
