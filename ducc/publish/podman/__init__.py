"""Podman's additional image store written beside the flat roots (docs/podman.md).

``metadata`` and ``whiteout`` are pure (ids, JSON records, the overlay form of whiteouts); ``diff`` turns
a published ``layerfs`` into an overlay ``diff`` directory; ``committer`` places trees and files in the
store; ``store`` is the writer (add, remove, gc) built on them.
"""
