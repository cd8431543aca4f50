"""portwright-cni: a chained CNI plugin that publishes ports through portwright's nftables maps.

``protocol`` speaks the CNI specification (pure), ``plugin`` implements the commands over a
backend interface, ``kernel`` is the real backend and ``holder`` the per-attachment process
that keeps host ports reserved. ``main`` is the ``portwright-cni`` console script.
"""

from __future__ import annotations

from .plugin import main, run

__all__ = ["main", "run"]
