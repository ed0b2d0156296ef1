"""Request bodies sent with a Content-Encoding (gzip, deflate, br), decompressed here as they
arrive rather than by aiohttp: aiohttp takes a gzip stream cut short as a shorter body, and
decompresses a chunk whatever it expands to. Here a stream that does not end as its format
says is an error, and no more than `limit` bytes are ever produced (--max_request_bytes counts
the decompressed bytes)."""

from __future__ import annotations

import zlib

import brotli

ACCEPTED = ("identity", "gzip", "deflate", "br")


class Undecodable(ValueError):
    """The body is not what its Content-Encoding says."""


class TooBig(ValueError):
    """The decompressed body would pass the limit."""


class Decoder:
    """Feed the body's chunks, then `finish()`; each returns the decompressed bytes so far."""

    def __init__(self, encoding: str, limit: int):
        if encoding not in ACCEPTED:
            raise ValueError(encoding)
        self.encoding, self.left = encoding, limit
        if encoding in ("gzip", "deflate"):  # 32 + 15: a gzip or zlib header, found by zlib
            self._zlib = zlib.decompressobj(32 + zlib.MAX_WBITS)
        elif encoding == "br":
            self._brotli = brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        if self.encoding == "identity":
            return self._count(data)
        try:
            if self.encoding == "br":
                return self._count(self._brotli.process(data))
            out = []
            while data:
                out.append(self._count(self._zlib.decompress(data, self.left + 1)))
                data = self._zlib.unconsumed_tail
            return b"".join(out)
        except (zlib.error, brotli.error) as e:
            raise Undecodable(str(e)) from None

    def finish(self) -> bytes:
        if self.encoding == "identity":
            return b""
        if self.encoding == "br":
            if not self._brotli.is_finished():
                raise Undecodable("the brotli stream ends early")
            return b""
        if not self._zlib.eof or self._zlib.unused_data:
            raise Undecodable("the stream ends early" if not self._zlib.eof
                              else "bytes after the end of the stream")
        return b""

    def _count(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise TooBig()
        return data
