"""The pure part of the watch cache: an indexed object store and the relist diff. No I/O, no asyncio.

Objects are the apiserver's raw JSON dicts, keyed ``namespace/name`` (just ``name`` for cluster-scoped
objects such as namespaces). Named indexes map each object to any number of string values::

    store = Store(indexes={"uid": lambda o: [o["metadata"]["uid"]]})
    store.put(pod)
    store.by_index("uid", "4f0c...")     # -> [pod]

:func:`diff_snapshot` turns "what we had" and "what a fresh list returned" into the events a watcher
would have seen, so a consumer that missed a stretch of the watch (410 Gone, a restarted apiserver)
converges through ordinary ADDED/MODIFIED/DELETED calls: no delete is missed and no phantom remains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

__all__ = ["EventType", "IndexFunc", "KubeObject", "Store", "diff_snapshot", "object_key"]

log = logging.getLogger(__name__)

KubeObject = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
IndexFunc = Callable[[KubeObject], Iterable[str]]


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name``, or ``name`` for a cluster-scoped object."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"object without metadata.name: {str(obj)[:200]}")
    return f"{namespace}/{name}" if namespace else name


def key_for(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _meta(obj: Mapping[str, Any], field: str) -> str | None:
    value = (obj.get("metadata") or {}).get(field)
    return value if isinstance(value, str) else None


def diff_snapshot(
    old: Mapping[str, KubeObject], new: Mapping[str, KubeObject]
) -> list[tuple[EventType, KubeObject, KubeObject | None]]:
    """The events that turn the store ``old`` into ``new`` (both keyed by :func:`object_key`).

    Each event is ``(type, obj, old_obj)``: DELETED for keys gone from ``new`` (``obj`` is the last
    state we knew), ADDED for new keys, MODIFIED when the ``resourceVersion`` changed. An object that was
    deleted and re-created under the same name (another ``uid``) gives DELETED for the old one, then
    ADDED. Deletions come first, then additions and modifications in ``new``'s order.
    """
    deleted: list[tuple[EventType, KubeObject, KubeObject | None]] = []
    changed: list[tuple[EventType, KubeObject, KubeObject | None]] = []
    for key, was in old.items():
        now = new.get(key)
        if now is None or _meta(now, "uid") != _meta(was, "uid"):
            deleted.append(("DELETED", was, was))
    for key, now in new.items():
        before = old.get(key)
        if before is None or _meta(now, "uid") != _meta(before, "uid"):
            changed.append(("ADDED", now, None))
        elif _meta(now, "resourceVersion") != _meta(before, "resourceVersion"):
            changed.append(("MODIFIED", now, before))
    return deleted + changed


class Store:
    """Objects by key plus named indexes; mutated only by its owner (the watch cache's task)."""

    def __init__(self, indexes: Mapping[str, IndexFunc] | None = None) -> None:
        self._objects: dict[str, KubeObject] = {}
        self._index_funcs: dict[str, IndexFunc] = dict(indexes or {})
        self._indexes: dict[str, dict[str, set[str]]] = {name: {} for name in self._index_funcs}
        self._indexed: dict[str, dict[str, set[str]]] = {}  # key -> index -> the values it was filed under

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def get(self, namespace: str | None, name: str) -> KubeObject | None:
        """The object ``namespace/name`` (namespace None or ``""`` for cluster-scoped objects)."""
        return self._objects.get(key_for(namespace, name))

    def get_key(self, key: str) -> KubeObject | None:
        return self._objects.get(key)

    def items(self) -> list[KubeObject]:
        return list(self._objects.values())

    def snapshot(self) -> dict[str, KubeObject]:
        """A shallow copy of the key -> object mapping."""
        return dict(self._objects)

    def index_names(self) -> list[str]:
        return list(self._index_funcs)

    def by_index(self, index: str, value: str) -> list[KubeObject]:
        """The objects whose index function ``index`` yielded ``value``."""
        try:
            keys = self._indexes[index].get(value, ())
        except KeyError:
            raise KeyError(
                f"no index named {index!r} (indexes: {', '.join(self._index_funcs) or 'none'})"
            ) from None
        return [self._objects[k] for k in sorted(keys)]

    def index_values(self, index: str) -> list[str]:
        """Every value index ``index`` currently holds."""
        return list(self._indexes[index])

    def put(self, obj: KubeObject) -> KubeObject | None:
        """Insert or replace ``obj``; returns the object it replaced."""
        key = object_key(obj)
        old = self._objects.get(key)
        if old is not None:
            self._unindex(key)
        self._objects[key] = obj
        self._index(key, obj)
        return old

    def delete(self, key: str) -> KubeObject | None:
        """Remove the object under ``key``; returns it (None if absent)."""
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key)
        return old

    def _values(self, index: str, obj: KubeObject) -> set[str]:
        try:
            return {str(v) for v in self._index_funcs[index](obj)}
        except Exception:
            # A malformed object must not stop the cache: it is stored, just not indexed here.
            log.warning("index %r failed on %s; object left out of that index", index, object_key(obj),
                        exc_info=True)  # fmt: skip
            return set()

    def _index(self, key: str, obj: KubeObject) -> None:
        if not self._indexes:
            return
        values = {index: self._values(index, obj) for index in self._indexes}
        self._indexed[key] = values
        for index, table in self._indexes.items():
            for value in values[index]:
                table.setdefault(value, set()).add(key)

    def _unindex(self, key: str) -> None:
        # The values recorded at insertion, not recomputed: a caller that mutated the stored object in
        # place must not leave stale index entries behind.
        for index, values in self._indexed.pop(key, {}).items():
            table = self._indexes[index]
            for value in values:
                keys = table.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del table[value]
