"""Whole lines appended to a file, or to stderr, in few writes: the access log's writer
(docs/ARCHITECTURE.md, "Request logging")."""

from __future__ import annotations

import os
import select
import stat
import sys
import threading


class LineFile:
    """Whole lines appended to a file, or to stderr, in few writes.

    `logging`'s handlers cost the request path about as much as the request itself (measured:
    a lock, a LogRecord, a stat() and a flush per line, ~110 us of server CPU a softmax
    request). Here a line is a list append; a thread writes what is pending every
    `flush_seconds` in one os.write of whole lines (Envoy's access log works the same way,
    flushing every second), and sooner when `MAX_PENDING` bytes are waiting (the thread is
    woken: the request path never writes). The file is
    opened O_APPEND, so `--workers` processes share it without tearing lines, and reopened at
    a flush when logrotate has moved it. On a pipe (stderr in a container, the --workers
    relay) a write is atomic only up to PIPE_BUF, so there the batch goes out in pieces of at
    most that many bytes, cut at line ends. A kill -9 loses at most the last `flush_seconds`;
    stop() and SIGTERM lose nothing. `flush_seconds=0` writes every line at once. Nothing here
    raises into a request: a failed write drops its lines and says so once on stderr."""

    MAX_PENDING = 64 << 10

    def __init__(self, path: str | None, flush_seconds: float):
        self.path, self.flush_seconds = path, flush_seconds
        self._fd = self._open() if path is not None else sys.stderr.fileno()
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._torn = False  # a failed write left part of a line in the file
        self._pending: list[str] = []
        self._size = 0
        self._lock = threading.Lock()  # guards _pending, held for an append or a swap only
        self._io = threading.Lock()  # one flush at a time, so batches land in order
        self._closed = threading.Event()
        self._wake = threading.Event()  # set when MAX_PENDING bytes wait, or at close
        self._failed = False
        self._thread = None
        if flush_seconds > 0:
            self._thread = threading.Thread(target=self._flush_every, name="access-log",
                                            daemon=True)
            self._thread.start()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, line: str) -> None:
        with self._lock:
            self._pending.append(line)
            self._size += len(line) + 1
            full = self._size >= self.MAX_PENDING
        if self._thread is None:
            self.flush()
        elif full:
            self._wake.set()

    def flush(self) -> None:
        with self._io:
            with self._lock:
                lines, self._pending, self._size = self._pending, [], 0
            if not lines or self._fd < 0:
                return
            done, data = 0, b""
            try:
                self._reopen_if_moved()
                # After a torn write the next line must not be glued onto the fragment.
                data = (("\n" if self._torn else "") + "\n".join(lines) + "\n").encode(
                    "utf-8", "backslashreplace")
                for piece in self._pieces(data):
                    while piece:
                        n = os.write(self._fd, piece)
                        done, piece = done + n, piece[n:]
                self._torn = False
            except OSError as e:  # a full disk loses lines, never a request
                if done:
                    self._torn = data[done - 1:done] != b"\n"
                self._report(e.strerror or str(e))

    def _pieces(self, data: bytes) -> list[bytes]:
        if self._regular:
            return [data]
        pieces, start = [], 0
        while start < len(data):
            end = start + select.PIPE_BUF
            if end < len(data):
                cut = data.rfind(b"\n", start, end)
                end = cut + 1 if cut >= start else (data.find(b"\n", end) + 1 or len(data))
            pieces.append(data[start:end])
            start = end
        return pieces

    def _report(self, why: str) -> None:
        if self._failed:
            return
        self._failed = True
        try:
            print(f"[serving] access log {self.path or 'stderr'}: {why}; lines are being "
                  "dropped", file=sys.stderr, flush=True)
        except Exception:  # stderr itself is gone: nowhere left to say it
            pass

    def _reopen_if_moved(self) -> None:
        if self.path is None:
            return
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        then = os.fstat(self._fd)
        if now is None or (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino):
            fd, self._fd = self._fd, self._open()
            os.close(fd)
            self._torn = False  # the fragment stays in the old file
            self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)

    def _flush_every(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception as e:  # a dead thread would stop the log without a word
                self._report(repr(e))

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        with self._io:
            if self.path is not None and self._fd >= 0:
                os.close(self._fd)
            self._fd = -1
