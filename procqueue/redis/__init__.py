"""The Redis broker: many nodes serving one queue (issue #9, in progress).

What is here so far is the protocol's foundation, each part tested against a
real Redis: the key layout (``_keys.py``), signed envelopes (``_signing.py``)
and the atomic scripts for submit, claim, lease renewal, fenced completion and
reclaim (``_scripts.py``, driven by ``_protocol.Broker``). Nodes, the CLI and
the front doors' ``broker=`` come next. Importing this package needs the
optional ``redis`` extra only when a broker is opened.
"""
