"""Readers of probe data in published and user formats (one module per source)."""
