"""A loopback TCP relay in front of a server, whose connections a test cuts all at once.

A cut shuts both sockets of every relayed connection down with no WebSocket closing handshake,
as a network that drops does: the browser sees close code 1006 and its client reconnects (through
the relay again, which goes on accepting), while the server's runs go on. While ``refusing``
is set, a new connection is closed as soon as it is accepted: a network that stays down. Two
threads per connection copy the bytes; every thread ends when its sockets close.
"""

from __future__ import annotations

import socket
import threading


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted = 0  # connections relayed so far
        self.refusing = False  # close new connections at once
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                if self.refusing:
                    client.close()
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                return  # closed
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
                self.accepted += 1
            for source, sink in (pair, pair[::-1]):
                threading.Thread(target=self._copy, args=(source, sink, pair), daemon=True).start()

    def _copy(self, source: socket.socket, sink: socket.socket,
              pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._shut(pair)

    def _shut(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other copying thread
            except OSError:
                pass
            sock.close()

    def cut(self) -> int:
        """Drop every connection relayed now; how many there were."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._shut(pair)
        return len(pairs)

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
        except OSError:
            pass
        self._listener.close()
        self.cut()
