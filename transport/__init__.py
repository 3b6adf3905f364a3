"""threadline's WebSocket edge (protocol codec, server, client): not built yet (issue 3)."""
