"""threadline's WebSocket edge: the protocol codec (sans-IO), the connection state, sessions,
the server, ``/metrics`` and the bundled trio client. Internal: the public names are
re-exported by ``threadline``."""
