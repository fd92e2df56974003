"""The Redis broker: many nodes serving one queue.

Run nodes with ``procqueue worker --broker redis://host:6379/0 --queue default``
and talk to the queue with ``TaskQueue(broker="redis://...", queue="default")``.
Modules: the key layout (``_keys.py``), signed envelopes (``_signing.py``), the
atomic scripts (``_scripts*.py``) behind ``_protocol.Broker``, the payload codec
(``_codec.py``), a node (``_node.py``, ``_cli.py``), schedules (``_cron.py``)
and the client (``_remote.py`` and its outcomes, ``_results.py``, behind the
front doors in ``_client.py``).
Needs the optional ``redis`` extra, imported only when a broker is opened.
"""

from __future__ import annotations

from ._remote import ClusterStats, NodeInfo, RemoteTaskFailedError

__all__ = ["ClusterStats", "NodeInfo", "RemoteTaskFailedError"]
