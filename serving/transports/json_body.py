"""JSON bodies and answers of the REST port without stalling the event loop, for both protocols.

JSON work on a body or an answer of more than THREAD_ABOVE_BYTES runs in a thread, and in slices:
json.loads, np.asarray and json.dumps each hold the GIL for their whole call, so one call on a
50 MB body stalls the event loop (and every gRPC call on it) even from a thread: json.loads of
61 MB in a thread kept the loop waiting 1.03 s; loads_sliced at most 0.05 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import re
import threading

import numpy as np

from serving.core.errors import invalid

THREAD_ABOVE_BYTES = 1 << 16     # bigger bodies and answers are (de)coded in a thread
SLICE_CHARS = 1 << 16            # JSON text parsed by one C call, about
SLICE_ELEMENTS = 1 << 13         # numbers converted or encoded by one C call, about
WALK_DEPTH = 4                   # JSON levels walked in Python when slicing a big body


def _unique(pairs: list) -> dict:
    """A JSON object; ValueError if it names a key twice (which of the two would count differs
    between parsers: rapidjson, TF Serving's, takes the first, json the last)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {twice!r} in a JSON object")
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique)
_loads = _DECODER.decode
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(s: str, i: int) -> int:
    return _SPACE.match(s, i).end()


_gc_lock, _gc_pauses = threading.Lock(), 0


@contextlib.contextmanager
def _no_gc():
    """The cyclic GC off while a parse builds millions of (acyclic) lists: each full collection
    over them held the GIL for 0.3 s, and made parsing 1.5M rows of [x] 4x slower. It is on
    again once no parse runs (the lists are then collected once, in about 0.1 s for 1.5M)."""
    global _gc_pauses
    with _gc_lock:
        _gc_pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.enable()


def loads_sliced(text: str):
    """json.loads(text), but no C call parses much more than SLICE_CHARS: a big document's
    first WALK_DEPTH levels are walked here and runs of their elements parsed at once, so that
    the thread running this lets others take the GIL between runs."""
    if len(text) <= SLICE_CHARS:
        return _loads(text)
    with _no_gc():
        value, end = _value(text, _skip(text, 0), WALK_DEPTH)
    if _skip(text, end) != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _value(s: str, i: int, depth: int):
    if depth and len(s) - i > SLICE_CHARS:
        if s.startswith("[", i):
            return _array(s, _skip(s, i + 1), depth - 1)
        if s.startswith("{", i):
            return _object(s, _skip(s, i + 1), depth - 1)
    return _DECODER.raw_decode(s, i)


def _array(s: str, i: int, depth: int):
    out = []
    if s.startswith("]", i):
        return out, i + 1
    boundary = None  # matches the end of an element like the first one, and the comma after it
    walk = False     # elements are big: walk into each instead of parsing runs of them
    retry_at = 0
    while True:
        if boundary is not None and not walk and i >= retry_at:
            m = boundary.search(s, i + SLICE_CHARS)
            if m is not None:  # the elements up to that comma in one call
                j = m.end() - 1
                try:
                    out.extend(_loads("[" + s[i:j] + "]"))
                    i = _skip(s, j + 1)
                    continue
                except (ValueError, RecursionError):
                    retry_at = j  # the comma is inside an element, or past this array
        start = i
        if boundary is None or walk:
            v, i = _value(s, i, depth)
        else:
            v, i = _DECODER.raw_decode(s, i)
        if boundary is None:
            walk = i - start > SLICE_CHARS
            tail = s[max(start, i - 64):i]
            boundary = re.compile(re.escape(tail[len(tail.rstrip("]}")):]) + r"\s*,")
        out.append(v)
        i = _skip(s, i)
        if s.startswith(",", i):
            i = _skip(s, i + 1)
        elif s.startswith("]", i):
            return out, i + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)


def _object(s: str, i: int, depth: int):
    out = {}
    if s.startswith("}", i):
        return out, i + 1
    while True:
        if not s.startswith('"', i):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, i)
        key, i = _DECODER.raw_decode(s, i)
        i = _skip(s, i)
        if not s.startswith(":", i):
            raise json.JSONDecodeError("Expecting ':' delimiter", s, i)
        if key in out:
            raise ValueError(f"duplicate key {key!r} in a JSON object")
        out[key], i = _value(s, _skip(s, i + 1), depth)
        i = _skip(s, i)
        if s.startswith(",", i):
            i = _skip(s, i + 1)
        elif s.startswith("}", i):
            return out, i + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)


def _no_literals(value, dtype) -> None:
    """ValueError if a numeric tensor's JSON holds null or a boolean: np.asarray would make them
    NaN and 1.0 (TF Serving's parser refuses both). The leaves' types are collected a level at
    a time by C loops (set(map(type, ...))), about 10 ns an element."""
    if np.dtype(dtype).kind not in "iufc":
        return
    level = value if isinstance(value, list) else [value]
    while level:
        types = set(map(type, level))
        if type(None) in types:
            raise ValueError("null is not a number")
        if bool in types:
            raise ValueError("a boolean (true/false) is not a number")
        if list not in types:
            return
        level = list(itertools.chain.from_iterable(v for v in level if type(v) is list))


def to_array(value, dtype) -> np.ndarray:
    """np.asarray(value, dtype), converting a long list about SLICE_ELEMENTS numbers at a time;
    null and booleans in a numeric tensor are a ValueError."""
    if not isinstance(value, list) or len(value) < 2:
        _no_literals(value, dtype)
        return np.asarray(value, dtype)
    step = max(1, SLICE_ELEMENTS // max(1, np.asarray(value[0], dtype).size))
    if step >= len(value):
        _no_literals(value, dtype)
        return np.asarray(value, dtype)
    chunks = []
    for i in range(0, len(value), step):
        _no_literals(value[i:i + step], dtype)
        chunks.append(np.asarray(value[i:i + step], dtype))
    return np.concatenate(chunks)


def json_list(n: int, per_row: int, rows) -> list[bytes]:
    """json.dumps(rows(0, n)) in pieces, each encoding about SLICE_ELEMENTS numbers."""
    step = max(1, SLICE_ELEMENTS // max(1, per_row))
    pieces = [b"["]
    for i in range(0, n, step):
        pieces += [b", "] if i else []
        pieces.append(json.dumps(rows(i, min(i + step, n)))[1:-1].encode())
    return pieces + [b"]"]


def json_array(a: np.ndarray) -> list[bytes]:
    if a.ndim == 0:
        return [json.dumps(a.tolist()).encode()]
    return json_list(len(a), a[0].size if len(a) else 1, lambda i, j: a[i:j].tolist())




async def off_the_loop(size: int, fn, *args):
    """fn(*args), in a thread when `size` bytes are involved beyond THREAD_ABOVE_BYTES."""
    if size > THREAD_ABOVE_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)



def parse(body: bytes, content_type: str):
    """The JSON document of a request body; INVALID_ARGUMENT ("JSON Parse error") if it is none."""
    try:
        return loads_sliced(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, RecursionError):
            e = "JSON nested too deeply"
        hint = (f" (Content-Type was {content_type!r}; the body must be JSON)"
                if content_type and "json" not in content_type else "")
        raise invalid(f"JSON Parse error: {e}{hint}") from None
