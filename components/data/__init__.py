"""Data stage: load, validate, split."""
