"""What the WebSocket edge counts, as things happen (``/metrics`` only reads it).

One ``ServerStats`` per server, plain fields on one trio thread: an increment is the whole
cost of a figure on the hot path, and a scrape is O(1) in connections and actors.
"""

from __future__ import annotations

import attrs

from threadline.actors.stats import Histogram

#: How an upload ended (``http_attachments.py``; ``threadline_attachment_uploads_total``).
UPLOAD_OUTCOMES = ("stored", "too_large", "unsupported_type", "limit_reached", "bad_request",
                   "aborted", "failed")


@attrs.define
class ServerStats:
    connections_open: int = 0              # gauge: WebSocket sessions now
    connections_total: int = 0             # WebSockets accepted
    closes: dict[int, int] = attrs.Factory(dict)          # connections ended, by close code
    handshake_failures: dict[int, int] = attrs.Factory(dict)  # refused handshakes, by HTTP status
    auth_failures: dict[str, int] = attrs.Factory(dict)   # 401s, by short reason
    frames_received: int = 0               # client messages received
    bytes_received: int = 0                # their payload bytes
    frames_sent: int = 0                   # frames written to clients
    bad_frames: int = 0                    # answered bad_frame
    rate_limited: int = 0                  # frames dropped by a rate limit (frames or bytes)
    limits_reached: int = 0                # requests refused with limit_reached
    send_seconds: Histogram = attrs.Factory(Histogram)    # a send frame to its accepted reply
    # attachments (``http_attachments.py``): uploads by outcome, bytes stored, downloads whole
    attachment_uploads: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(UPLOAD_OUTCOMES, 0))
    attachment_bytes_uploaded: int = 0
    attachment_downloads: int = 0

    def closed(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1

    def auth_failed(self, reason: str) -> None:
        self.auth_failures[reason] = self.auth_failures.get(reason, 0) + 1

    def refused(self, status: int) -> None:
        self.handshake_failures[status] = self.handshake_failures.get(status, 0) + 1
