"""JSON bodies and answers of the REST port without stalling the event loop, for both protocols.

JSON work on a body or an answer of more than THREAD_ABOVE_BYTES runs in a thread, and in slices:
json.loads, np.asarray and json.dumps each hold the GIL for their whole call, so one call on a
50 MB body stalls the event loop (and every gRPC call on it) even from a thread: json.loads of
61 MB in a thread kept the loop waiting 1.03 s; loads_sliced at most 0.05 s.

A big array of numbers (nested or flat) never becomes Python lists: 16M numbers as lists cost
~32 bytes each (a float object and its slot), ~14x the body. parse() leaves such an array as a
NumberArray, its span of the body, and to_array() decodes it to the tensor's dtype a run of rows
at a time: numpy checks that the run is rectangular from its brackets and commas, and simdjson
(pysimdjson's as_buffer) reads its numbers straight into a buffer. What a run cannot take (null,
booleans, a float in an integer tensor, ...) goes through the list path, for that run only, so
the answers and errors are the list path's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import math
import re
import threading

import numpy as np
import simdjson

from serving.core.errors import invalid

THREAD_ABOVE_BYTES = 1 << 16     # bigger bodies and answers are (de)coded in a thread
SLICE_CHARS = 1 << 16            # JSON text parsed by one C call, about
SLICE_ELEMENTS = 1 << 13         # numbers converted or encoded by one C call, about
WALK_DEPTH = 4                   # JSON levels walked in Python when slicing a big body
RUN_BYTES = 1 << 20              # a NumberArray is decoded this much text at a time, about


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


def loads_sliced(text: str, raw: bytes | None = None):
    """json.loads(text), but no C call parses much more than SLICE_CHARS: a big document's
    first WALK_DEPTH levels are walked here and runs of their elements parsed at once, so that
    the thread running this lets others take the GIL between runs. Given `raw`, the text's
    bytes when it is ASCII, a big array of numbers among those levels is a NumberArray."""
    if len(text) <= SLICE_CHARS:
        return _loads(text)
    with _no_gc():
        value, end = _value(text, _skip(text, 0), WALK_DEPTH, raw)
    if _skip(text, end) != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _value(s: str, i: int, depth: int, raw: bytes | None = None):
    if depth and len(s) - i > SLICE_CHARS:
        if s.startswith("[", i):
            numbers = None if raw is None else NumberArray.at(raw, i)
            if numbers is not None:
                return numbers, numbers.end
            return _array(s, _skip(s, i + 1), depth - 1, raw)
        if s.startswith("{", i):
            return _object(s, _skip(s, i + 1), depth - 1, raw)
    return _DECODER.raw_decode(s, i)


def _array(s: str, i: int, depth: int, raw: bytes | None = None):
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
            v, i = _value(s, i, depth, raw)
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


def _object(s: str, i: int, depth: int, raw: bytes | None = None):
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
        out[key], i = _value(s, _skip(s, i + 1), depth, raw)
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


_OPEN, _CLOSE, _COMMA = (ord(c) for c in "[],")
_FIRST_OF_A_NUMBER = frozenset(b"-0123456789")
_BUFFER_TYPES = {"i": ("i", np.int64), "u": ("u", np.uint64), "f": ("d", np.float64)}


class NumberArray:
    """A JSON array whose first leaf is a number, left as its span raw[start:end] of the body
    (brackets included) until to_array gives it a dtype."""

    __slots__ = ("raw", "start", "end")

    def __init__(self, raw: bytes, start: int, end: int):
        self.raw, self.start, self.end = raw, start, end

    @classmethod
    def at(cls, raw: bytes, i: int) -> NumberArray | None:
        """The array of numbers opening at raw[i] ("["), or None if it is something else (its
        first leaf no number, a string inside, no end) or no longer than SLICE_CHARS."""
        first = i
        while first < len(raw) and raw[first] in b"[ \t\n\r":
            first += 1
        if first == len(raw) or raw[first] not in _FIRST_OF_A_NUMBER:
            return None
        carry, at, size = 0, i, 1 << 12  # small arrays are found small: windows grow
        while at < len(raw):  # its end: where the bracket depth is back to 0
            size = min(size, len(raw) - at)
            where, depth = _brackets(np.frombuffer(raw, np.uint8, size, at))
            done = np.flatnonzero(depth + carry == 0)
            if done.size:
                end = at + int(where[done[0]]) + 1
                # a string could hold brackets: such an array takes the list path
                big = end - i > SLICE_CHARS and raw.find(b'"', i, end) < 0
                return cls(raw, i, end) if big else None
            carry += int(depth[-1]) if depth.size else 0
            at, size = at + size, min(2 * size, RUN_BYTES)
        return None

    def to_list(self) -> list:
        return loads_sliced(self.raw[self.start:self.end].decode())

    def to_array(self, dtype) -> np.ndarray:
        """The array in `dtype`, decoded a run of about RUN_BYTES of rows at a time."""
        raw, pos, end = self.raw, self.start + 1, self.end - 1
        chunks: list[np.ndarray] = []
        while True:
            cut = _run_end(raw, pos, end)
            if not raw[pos:cut].strip():
                raise ValueError("Expecting value: an array holds an empty element")
            chunks.append(_run_array(b"[" + raw[pos:cut] + b"]", dtype,
                                     chunks[0].shape[1:] if chunks else None))
            if cut == end:
                break
            pos = cut + 1
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _brackets(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where the brackets of `b` are, the depth after each, from 0 before `b`): brackets are
    far fewer than bytes, so the depths are summed over them alone."""
    where = np.flatnonzero((b == _OPEN) | (b == _CLOSE))
    return where, np.cumsum(np.where(b[where] == _OPEN, 1, -1), dtype=np.int32)


def _run_end(raw: bytes, pos: int, end: int) -> int:
    """The last top-level comma of the array's elements within RUN_BYTES of `pos` (more if one
    element is longer), or `end`."""
    size = RUN_BYTES
    while pos + size < end:
        where, depth = _brackets(np.frombuffer(raw, np.uint8, size, pos))
        # the stretches at depth 0: before the first bracket, after each one closing to 0
        starts = [0, *(where[depth == 0] + 1).tolist()]
        stops = [*(where[:1].tolist() or [size]),
                 *[int(where[k + 1]) if k + 1 < where.size else size
                   for k in np.flatnonzero(depth == 0).tolist()]]
        for start, stop in zip(reversed(starts), reversed(stops)):
            comma = raw.rfind(b",", pos + start, pos + stop)
            if comma >= 0:
                return comma
        size *= 2
    return end


def _run_shape(b: np.ndarray) -> tuple[int, ...] | None:
    """The shape of the JSON array of arrays of numbers whose text is `b`, from its brackets
    and commas, or None if it is not rectangular: the arrays of each level hold as many
    elements each (the last level's counted by their commas), and the levels above the last
    hold arrays (a number among them shows as one too many in the count of numbers)."""
    where, depth = _brackets(b)
    opening = b[where] == _OPEN
    level = np.where(opening, depth, depth + 1)  # of the array a bracket opens or closes
    last = int(level.max())
    commas = np.flatnonzero(b == _COMMA)
    shape: list[int] = []
    for lv in range(1, last + 1):
        opens, closes = where[opening & (level == lv)], where[~opening & (level == lv)]
        if opens.size != closes.size or opens.size != math.prod(shape):
            return None
        inside = where[opening & (level == lv + 1)] if lv < last else commas
        count = np.searchsorted(inside, closes) - np.searchsorted(inside, opens)
        if np.any(count != count[0]):
            return None
        shape.append(int(count[0]) + (lv == last))
    return tuple(shape)


def _run_array(run: bytes, dtype, rows: tuple[int, ...] | None) -> np.ndarray:
    """A run "[row, row, ...]" in `dtype`; its rows must have the shape `rows` when given."""
    shape = _run_shape(np.frombuffer(run, np.uint8))
    kind, wide = _BUFFER_TYPES[np.dtype(dtype).kind]
    try:
        flat = np.frombuffer(simdjson.Parser().parse(run).as_buffer(of_type=kind), wide)
    except TypeError:  # null, booleans, a float for an integer: the list path says what
        flat = None
    if flat is None or shape is None or flat.size != math.prod(shape):
        a = to_array(_loads(run.decode()), dtype)  # the list path's answer or error
    else:
        a = flat.reshape(shape).astype(dtype, copy=False)
    if rows is not None and a.shape[1:] != rows:
        raise ValueError(f"rows of shape {list(a.shape[1:])} after rows of shape {list(rows)}: "
                         "the array is not rectangular")
    return a


def to_array(value, dtype) -> np.ndarray:
    """np.asarray(value, dtype), converting a long list about SLICE_ELEMENTS numbers at a time
    (a NumberArray a run at a time); null and booleans in a numeric tensor are a ValueError."""
    if isinstance(value, NumberArray):
        if np.dtype(dtype).kind in _BUFFER_TYPES and np.dtype(dtype).isbuiltin:
            return value.to_array(dtype)
        value = value.to_list()
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
        return loads_sliced(body.decode(json.detect_encoding(body), "surrogatepass"),
                            body if body.isascii() else None)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, RecursionError):
            e = "JSON nested too deeply"
        hint = (f" (Content-Type was {content_type!r}; the body must be JSON)"
                if content_type and "json" not in content_type else "")
        raise invalid(f"JSON Parse error: {e}{hint}") from None
