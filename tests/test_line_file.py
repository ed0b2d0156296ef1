"""serving/line_file.py, the access log's writer: every line lands whole and in order, from
many threads, across a logrotate move, at close, and a failing disk never raises into a
request."""

from __future__ import annotations

import os
import threading

import pytest

from serving.line_file import LineFile


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


def test_a_full_buffer_is_written_without_waiting_for_the_thread(tmp_path):
    path = tmp_path / "access.log"
    out = LineFile(str(path), flush_seconds=3600)
    line = "x" * 1000
    for _ in range(LineFile.MAX_PENDING // 1000 + 1):
        out.write(line)
    assert len(read(path)) > 60
    out.close()


def test_the_thread_writes_pending_lines(tmp_path):
    path = tmp_path / "access.log"
    out = LineFile(str(path), flush_seconds=0.01)
    out.write("soon")
    try:
        for _ in range(6000):  # up to a minute on a loaded machine; usually 10 ms
            if read(path) == ["soon"]:
                break
            threading.Event().wait(0.01)
        assert read(path) == ["soon"]
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
