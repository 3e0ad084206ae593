"""The operator's status page: what the gateway sees, as a page beside ``/metrics``.

``tracker`` keeps a bounded copy of devices, readings, scores and alerts (fed by the
pipeline); ``page`` renders it as HTML, ``svg`` draws the per-device charts, ``config`` is
the ``[status]`` section, ``wiring`` builds the page for a running gateway.
"""
