"""The request-body bytes the REST port holds at once (docs/ARCHITECTURE.md, "Serving"): a body
is counted from its head's arrival until its answer is sent (read, decoded, run, encoded), at
its Content-Length, or at --max_request_bytes when its length is not known before it is read
(chunked, compressed). Beyond --max_request_bytes_in_flight a request is answered 503 with
Retry-After at once, its body unread, so that many big bodies at once cannot exhaust memory
(each costs a few times its bytes while decoded) and the small ones keep being answered."""

from __future__ import annotations

import contextlib

RETRY_AFTER_SECONDS = 1


class Busy(Exception):
    def __init__(self, held: int, limit: int):
        super().__init__(f"Server busy: {held} bytes of request bodies are being read or "
                         f"decoded, at most {limit} at once (--max_request_bytes_in_flight); "
                         f"retry after {RETRY_AFTER_SECONDS} s")


class BodyBudget:
    """Bytes held by the bodies in flight. One body is always taken when none is held, so a
    limit below --max_request_bytes still serves one big body at a time."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    @contextlib.contextmanager
    def hold(self, size: int):
        """Holds `size` bytes for the block; Busy at once if they do not fit."""
        if self.held and self.held + size > self.limit:
            raise Busy(self.held, self.limit)
        self.held += size
        try:
            yield
        finally:
            self.held -= size
