"""A paste filter that gives Swift's proxy an in-process ``swift.cache``.

tempauth (and keystoneauth) keep tokens in ``swift.cache``, which is memcached
in production; the lab's proxy runs one process, so a dict will do and no
memcached is needed.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterable
from typing import Any

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class DictCache:
    """The subset of swift's MemcacheRing that the auth middlewares call."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[Any, float]] = {}

    def get(self, key: str, **_kw: Any) -> Any:
        value, expires = self._items.get(key, (None, 0.0))
        if expires and expires < _time.time():
            self._items.pop(key, None)
            return None
        return value

    def set(self, key: str, value: Any, serialize: bool = True, time: float = 0,
            **_kw: Any) -> None:
        self._items[key] = (value, _time.time() + time if time else 0.0)

    def delete(self, key: str, **_kw: Any) -> None:
        self._items.pop(key, None)

    def incr(self, key: str, delta: int = 1, time: float = 0, **_kw: Any) -> int:
        value = int(self.get(key) or 0) + delta
        self.set(key, value, time=time)
        return value


def filter_factory(global_conf: dict[str, str], **local_conf: str) -> Callable[[App], App]:
    cache = DictCache()

    def wrap(app: App) -> App:
        def middleware(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            env["swift.cache"] = cache
            return app(env, start_response)

        return middleware

    return wrap
