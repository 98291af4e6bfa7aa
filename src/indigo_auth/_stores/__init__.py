"""Where tokens live between calls, between processes and between machines."""

from __future__ import annotations

from ._base import TokenStore as TokenStore
from ._base import store_key as store_key
from ._memory import MemoryStore as MemoryStore

__all__ = ["MemoryStore", "TokenStore", "store_key"]
