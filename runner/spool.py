"""A spool: a long sequence kept on disk, a chunk at a time in memory.

A plan of half a million runs cannot be held as Python objects (a run's view and its change
take about 1 KB): observing, planning and writing a plan stream its runs through spools
instead. A spool appends items in memory; past :data:`SPILL_AT` items it moves them to an
anonymous temporary file as pickled chunks of :data:`CHUNK` items and from then on holds one
chunk being written and one being read. :meth:`Spool.seal` ends the appending: a spool that
never spilled becomes a plain tuple (small plans are exactly what they were), a spilled one
a read-only :class:`Spool` that iterates, counts and slices like a tuple.

The file is the process's own (``tempfile.TemporaryFile``: unlinked as it is made, gone when
the spool is). Pickle is safe here: nothing reads a chunk but the spool that wrote it.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, Generic, TypeVar, overload

_T = TypeVar("_T")

#: Items a spool holds in memory before it moves them to its file.
SPILL_AT = 10_000
#: Items a chunk of the file holds (what one read brings into memory).
CHUNK = 1_000
#: Items sorted in memory at once by :func:`sort` (each sorted run then merged from disk).
SORT_RUN = 20_000


class _Sequence(Sequence[_T], Generic[_T]):
    """What the spool's sequences share: slices read in order, indices found by
    :meth:`_at`, equality with any sequence of the same items, no hash."""

    def _at(self, index: int) -> _T:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> _T: ...

    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...

    def __getitem__(self, index: int | slice) -> _T | list[_T]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return list(itertools.islice(self, start, max(start, stop)))
            return list(self)[index]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("index out of range")
        return self._at(index)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]


class Spool(_Sequence[_T]):
    """Items appended in order; read back in that order, as often as asked."""

    def __init__(
        self,
        items: Iterable[_T] = (),
        *,
        spill_at: int | None = None,
        order: Callable[[_T], Any] | None = None,
        counts: Iterable[Callable[[_T], bool]] = (),
    ) -> None:
        """``order``: a sort key whose order the spool notes as items come (see
        :meth:`sorted_by`); ``counts``: filters it counts as items come (see
        :meth:`count_where`). Each spares a pass over the file later.

        A spool given an ``order`` keeps its items in that order when they come nearly in
        it: an item that comes before items still in memory (not yet in the file) is put in
        its place among them, after those with an equal key. A server's page order differs
        from runner's only among runs sharing a time (runner breaks ties by id, the server
        does not), and one such pair otherwise costs a sort of the whole spool on disk."""
        self._spill_at = SPILL_AT if spill_at is None else spill_at
        self._chunk_size = CHUNK
        self._order = order
        self._ordered = True
        self._last: Any = None
        #: With ``order``, the key of the last item in the file (none comes before it now).
        self._floor: Any = None
        self._buffer: list[_T] = []
        self._file: IO[bytes] | None = None
        #: Each chunk's (offset, length in bytes, items) in the file.
        self._chunks: list[tuple[int, int, int]] = []
        self._on_disk = 0
        self._length = 0
        self._sealed = False
        self._counts: dict[Callable[[Any], bool], int] = {keep: 0 for keep in counts}
        self._cached: tuple[int, list[_T]] | None = None
        self.extend(items)

    # Writing.

    def append(self, item: _T) -> None:
        if self._sealed:
            raise ValueError("a sealed spool takes no more items")
        for keep in self._counts:
            self._counts[keep] += bool(keep(item))
        if self._order is not None and self._ordered:
            key = self._order(item)
            if self._length and key < self._last:
                if self._floor is None or not key < self._floor:
                    place = bisect.bisect_right(self._buffer, key, key=self._order)
                    self._buffer.insert(place, item)
                    self._length += 1
                    self._spill_or_flush()
                    return
                self._ordered = False
            self._last = key
        self._buffer.append(item)
        self._length += 1
        self._spill_or_flush()

    def _spill_or_flush(self) -> None:
        if self._file is None:
            if len(self._buffer) > self._spill_at:
                # Held open for the spool's life, closed by close() or with the spool.
                self._file = tempfile.TemporaryFile(prefix="runner-spool-")  # noqa: SIM115
                self._flush(final=False)
        elif len(self._buffer) >= self._chunk_size:
            self._flush(final=False)

    def extend(self, items: Iterable[_T]) -> None:
        for item in items:
            self.append(item)

    def _flush(self, *, final: bool) -> None:
        """Write the buffer's whole chunks (with ``final``, the rest too): every chunk but
        the last holds :data:`CHUNK` items, so an index finds its chunk by division."""
        assert self._file is not None
        written = 0
        size = self._chunk_size
        while len(self._buffer) - written >= size or (final and written < len(self._buffer)):
            part = self._buffer[written : written + size]
            data = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
            offset = self._file.seek(0, 2)
            self._file.write(data)
            self._chunks.append((offset, len(data), len(part)))
            written += len(part)
            if self._order is not None and self._ordered:
                self._floor = self._order(part[-1])
        self._on_disk += written
        del self._buffer[:written]

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def seal(self) -> Sequence[_T]:
        """No more items: a tuple when they all fit in memory, else this spool, read-only."""
        if self._file is None:
            return tuple(self._buffer)
        self._flush(final=True)
        self._file.flush()
        self._sealed = True
        return self

    def close(self) -> None:
        """Let the file go now rather than when the spool is collected."""
        if self._file is not None:
            self._file.close()
        self._buffer = []
        self._cached = None

    # Reading.

    def _load(self, index: int) -> list[_T]:
        """Chunk ``index`` read from the file."""
        assert self._file is not None
        offset, size, _ = self._chunks[index]
        self._file.seek(offset)
        items: list[_T] = pickle.loads(self._file.read(size))
        return items

    def _chunk(self, index: int) -> list[_T]:
        """Chunk ``index``, kept for the next index into it."""
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self._load(index))
        return self._cached[1]

    def __iter__(self) -> Iterator[_T]:
        for index in range(len(self._chunks)):
            yield from self._load(index)
        yield from list(self._buffer)

    def __len__(self) -> int:
        return self._length

    def __bool__(self) -> bool:
        return self._length > 0

    def _at(self, index: int) -> _T:
        if self._file is None:
            return self._buffer[index]
        if index >= self._on_disk:
            return self._buffer[index - self._on_disk]
        return self._chunk(index // self._chunk_size)[index % self._chunk_size]

    def count_where(self, keep: Callable[[_T], bool]) -> int:
        """How many items ``keep`` keeps: counted as they came when the spool was made to
        count it, else counted once it is sealed (a pass over the file), then remembered."""
        if keep not in self._counts:
            found = sum(1 for item in self if keep(item))
            if not self._sealed:
                return found
            self._counts[keep] = found
        return self._counts[keep]

    def sorted_by(self, key: Callable[[_T], Any]) -> bool:
        """Whether the items came in ``key`` order, as noted (see ``order``)."""
        return self._order is key and self._ordered

    def where(self, keep: Callable[[_T], bool]) -> Filtered[_T]:
        return Filtered(self, keep)

    def __repr__(self) -> str:
        return f"Spool({self._length} items{', on disk' if self.spilled else ''})"


class Filtered(_Sequence[_T]):
    """The items of a spool that ``keep`` keeps, read from it as they are asked for."""

    def __init__(self, source: Spool[_T], keep: Callable[[_T], bool]) -> None:
        self._source = source
        self._keep = keep

    def __iter__(self) -> Iterator[_T]:
        return (item for item in self._source if self._keep(item))

    def __len__(self) -> int:
        return self._source.count_where(self._keep)

    def __bool__(self) -> bool:
        return any(True for _ in self)

    def _at(self, index: int) -> _T:
        return next(itertools.islice(self, index, None))


class Chained(_Sequence[_T]):
    """Sequences read one after another (a plan's changes, step by step)."""

    def __init__(self, parts: Iterable[Sequence[_T]]) -> None:
        self._parts = tuple(parts)

    def __iter__(self) -> Iterator[_T]:
        return itertools.chain.from_iterable(self._parts)

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts)

    def __bool__(self) -> bool:
        return any(part for part in self._parts)

    def _at(self, index: int) -> _T:
        for part in self._parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError("index out of range")


def is_spooled(items: Sequence[Any]) -> bool:
    """Whether ``items`` (or one of its parts) is read from disk: then hold none of it whole."""
    if isinstance(items, Spool):
        return items.spilled
    if isinstance(items, Filtered):
        return True
    if isinstance(items, Chained):
        return any(is_spooled(part) for part in items._parts)
    return False


def where(items: Sequence[_T], keep: Callable[[_T], bool]) -> Sequence[_T]:
    """The items ``keep`` keeps: a tuple, or for a spilled spool a view read from its file."""
    if isinstance(items, Spool) and items.spilled:
        return items.where(keep)
    return tuple(item for item in items if keep(item))


def chained(parts: Iterable[Sequence[_T]]) -> Sequence[_T]:
    """``parts`` one after another: a tuple, or a view when one of them is on disk."""
    listed = list(parts)
    if any(is_spooled(part) for part in listed):
        return Chained(listed)
    return tuple(itertools.chain.from_iterable(listed))


def sort(items: Sequence[_T], key: Callable[[_T], Any]) -> Sequence[_T]:
    """``items`` in ``key`` order (stable). In memory for a tuple or a spool that fits;
    for a spilled spool already in order, the spool itself; else a merge sort on disk: runs
    of :data:`SORT_RUN` items sorted in memory, each spooled, then merged a chunk at a time."""
    if not (isinstance(items, Spool) and items.spilled):
        return tuple(sorted(items, key=key))
    if items.sorted_by(key) or _in_order(items, key):
        return items
    runs: list[Spool[tuple[Any, int, _T]]] = []
    batch: list[tuple[Any, int, _T]] = []

    def spill_run() -> None:
        batch.sort(key=lambda entry: (entry[0], entry[1]))
        run: Spool[tuple[Any, int, _T]] = Spool(spill_at=0)
        run.extend(batch)
        run.seal()
        runs.append(run)
        batch.clear()

    for position, item in enumerate(items):
        batch.append((key(item), position, item))
        if len(batch) >= SORT_RUN:
            spill_run()
    if batch:
        spill_run()
    out: Spool[_T] = Spool(spill_at=0, order=key)
    for _, _, item in heapq.merge(*runs, key=lambda entry: (entry[0], entry[1])):
        out.append(item)
    for run in runs:
        run.close()
    return out.seal()


def _in_order(items: Iterable[_T], key: Callable[[_T], Any]) -> bool:
    last: Any = None
    first = True
    for item in items:
        current = key(item)
        if not first and current < last:
            return False
        last, first = current, False
    return True


def head(items: Sequence[_T], count: int) -> Sequence[_T]:
    """The first ``count`` items, as ``items[:count]`` is for a tuple."""
    if not (isinstance(items, Spool) and items.spilled):
        return tuple(items[:count])
    if count >= len(items):
        return items
    out: Spool[_T] = Spool(order=items._order)
    out.extend(itertools.islice(items, count))
    return out.seal()
