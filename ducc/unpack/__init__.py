"""Applying layers: path policy and whiteout rules (pure), one layer → a directory, layers → a flat root."""
