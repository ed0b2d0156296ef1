"""serving/observability/line_file.py, the access log's writer: every line lands whole and in
order, from many threads, across a logrotate move, at close, and a failing disk never raises into a
request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from serving.observability.line_file import LineFile
from tests.serving_fixtures import ROOT, wait_for


def read(path) -> list[str]:
    return path.read_text().splitlines()


def test_lines_are_pending_until_a_flush_and_land_whole_in_order(tmp_path):
    path = tmp_path / "access.log"
    out = LineFile(str(path), flush_seconds=3600)  # only flush() and close() write
    out.write('{"n": 1}')
    out.write('{"n": 2, "text": "caf\u00e9"}')
    assert read(path) == []
    out.flush()
    assert read(path) == ['{"n": 1}', '{"n": 2, "text": "caf\u00e9"}']
    out.write('{"n": 3}')
    out.close()  # close writes what is pending
    assert read(path)[-1] == '{"n": 3}'


def test_zero_seconds_writes_every_line_at_once(tmp_path):
    path = tmp_path / "access.log"
    out = LineFile(str(path), flush_seconds=0)
    out.write("one")
    assert read(path) == ["one"]
    out.close()


def test_a_full_buffer_wakes_the_thread_before_its_interval(tmp_path):
    path = tmp_path / "access.log"
    out = LineFile(str(path), flush_seconds=3600)  # only a full buffer can make it write now
    try:
        line = "x" * 1000
        for _ in range(LineFile.MAX_PENDING // 1000 + 1):
            out.write(line)
        wait_for(lambda: len(read(path)) > 60, 60, interval=0.01, what="the woken thread")
    finally:
        out.close()


def test_the_thread_writes_pending_lines(tmp_path):
    path = tmp_path / "access.log"
    out = LineFile(str(path), flush_seconds=0.01)
    out.write("soon")
    try:
        wait_for(lambda: read(path) == ["soon"], 60, interval=0.01, what="the thread's write")
    finally:
        out.close()


def test_many_threads_lose_no_line_and_tear_none(tmp_path):
    path = tmp_path / "access.log"
    out = LineFile(str(path), flush_seconds=0.001)

    def writer(k: int) -> None:
        for i in range(2000):
            out.write(f"{k}:{i}:" + "y" * (i % 300))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    lines = read(path)
    assert len(lines) == 8000
    for k in range(4):  # each thread's lines whole and in its order
        mine = [line.split(":") for line in lines if line.startswith(f"{k}:")]
        assert [int(i) for _, i, _ in mine] == list(range(2000))
        assert all(len(y) == int(i) % 300 for _, i, y in mine)


def test_a_file_moved_by_logrotate_is_reopened_at_the_next_flush(tmp_path):
    path = tmp_path / "access.log"
    out = LineFile(str(path), flush_seconds=3600)
    out.write("before")
    out.flush()
    path.rename(tmp_path / "access.log.1")
    out.write("after")
    out.close()
    assert read(tmp_path / "access.log.1") == ["before"]
    assert read(path) == ["after"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failing_disk_is_reported_once_and_never_raises(capfd):
    out = LineFile("/dev/full", flush_seconds=0)
    out.write("lost")
    out.write("lost too")
    out.close()
    err = capfd.readouterr().err
    assert err.count("access log /dev/full") == 1 and "lines are being dropped" in err


def test_no_path_means_stderr(capfd):
    out = LineFile(None, flush_seconds=3600)  # --access_log -
    out.write('{"to": "stderr"}')
    out.close()
    assert capfd.readouterr().err == '{"to": "stderr"}\n'


def test_pipe_writes_are_cut_at_line_ends_within_pipe_buf(tmp_path):
    """On a pipe only writes of at most PIPE_BUF bytes are atomic: a batch goes out in such
    pieces, each ending a line, so another writer's line never lands inside one of ours."""
    import select

    read_end, write_end = os.pipe()
    try:
        out = LineFile(f"/proc/self/fd/{write_end}", flush_seconds=3600)
        lines = [f"{i}:" + "z" * (i * 37 % 900) for i in range(300)] + ["L" * 9000, "end"]
        data = ("\n".join(lines) + "\n").encode()
        pieces = out._pieces(data)
        assert b"".join(pieces) == data and len(pieces) > 10
        assert all(p.endswith(b"\n") for p in pieces)
        assert all(len(p) <= select.PIPE_BUF for p in pieces if b"L" * 9000 not in p)
        out.close()
    finally:
        os.close(read_end)
        os.close(write_end)
    regular = LineFile(str(tmp_path / "file"), flush_seconds=3600)
    assert regular._pieces(data) == [data]  # O_APPEND on a file: one write
    regular.close()


def test_a_write_cut_short_does_not_glue_the_next_line_onto_the_fragment(tmp_path):
    """A file-size limit cuts a batch mid-line (EFBIG); once writes work again the next line
    starts on a line of its own, so every later line still parses."""
    script = f"""
import json, resource, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from serving.observability.line_file import LineFile
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
out = LineFile({str(tmp_path / "access.log")!r}, flush_seconds=0)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
out.write(json.dumps({{"n": 1, "pad": "p" * 60}}))
out.write(json.dumps({{"n": 2, "pad": "p" * 60}}))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
out.write(json.dumps({{"n": 3}}))
out.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "lines are being dropped" in done.stderr
    lines = read(tmp_path / "access.log")
    assert json.loads(lines[0])["n"] == 1
    assert len(lines[1]) < 80 and json.loads(lines[-1]) == {"n": 3}


def test_a_broken_stderr_never_raises_and_the_thread_lives_on(monkeypatch):
    class Broken:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    def taken_by_the_thread(line: str) -> bool:
        out.write(line)
        return wait_for(lambda: not out._pending, 60, interval=0.01, what="the thread")

    monkeypatch.setattr("sys.stderr", Broken())
    at_once = LineFile("/dev/full", flush_seconds=0)
    at_once.write("x" * 100)  # the write fails, and so does the report of it: neither raises
    at_once.close()
    out = LineFile("/dev/full", flush_seconds=0.01)
    try:  # the thread's first flush fails and its report raises: it must take lines after it
        assert taken_by_the_thread("first") and taken_by_the_thread("second")
    finally:
        out.close()
