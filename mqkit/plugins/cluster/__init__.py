"""Cluster mode on Redis Streams (the ``cluster`` plugin, ``pip install 'mqkit[cluster]'``).

:class:`~mqkit.plugins.cluster.plugin.ClusterPlugin` is switched on by ``enable_cluster``; its
settings are the ``[cluster]`` section (:class:`~mqkit.plugins.cluster.settings.ClusterSettings`).
See ``docs/cluster.md`` for what is built and what is not yet.
"""

from __future__ import annotations

from mqkit.plugins.cluster.plugin import ClusterPlugin
from mqkit.plugins.cluster.settings import ClusterSettings

__all__ = ["ClusterPlugin", "ClusterSettings"]
