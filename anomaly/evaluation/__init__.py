"""How good a model is on a labelled split: scoring a split, metrics, tables and plots."""
