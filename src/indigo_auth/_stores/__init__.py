"""Where tokens live between calls, between processes and between machines."""

from __future__ import annotations

from ._base import TokenStore as TokenStore
from ._base import store_key as store_key
from ._file import FileStore as FileStore
from ._file import default_cache_dir as default_cache_dir
from ._memory import MemoryStore as MemoryStore
from ._redis import RedisStore as RedisStore

__all__ = ["FileStore", "MemoryStore", "RedisStore", "TokenStore", "default_cache_dir", "store_key"]
