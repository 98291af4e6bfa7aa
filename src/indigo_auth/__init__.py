"""indigo-auth: a token manager for the Indigo browser API.

One sign-in for many callers, refreshed ahead of the 30-minute expiry, retried on
transient failures, and shared across processes and machines through stores.
"""

from __future__ import annotations

from ._api import Workspace as Workspace
from ._exceptions import IndigoAPIError as IndigoAPIError
from ._exceptions import IndigoAuthError as IndigoAuthError
from ._exceptions import IndigoProtocolError as IndigoProtocolError
from ._exceptions import IndigoUnavailableError as IndigoUnavailableError
from ._exceptions import InvalidCredentialsError as InvalidCredentialsError
from ._exceptions import RateLimitedError as RateLimitedError
from ._manager import AsyncTokenManager as AsyncTokenManager
from ._manager import ManagerStats as ManagerStats
from ._stores import FileStore as FileStore
from ._stores import MemoryStore as MemoryStore
from ._stores import RedisStore as RedisStore
from ._stores import TokenStore as TokenStore
from ._sync import TokenManager as TokenManager
from ._token import TokenState as TokenState

__version__ = "0.1.0"

__all__ = [
    "AsyncTokenManager",
    "FileStore",
    "IndigoAPIError",
    "IndigoAuthError",
    "IndigoProtocolError",
    "IndigoUnavailableError",
    "InvalidCredentialsError",
    "ManagerStats",
    "MemoryStore",
    "RateLimitedError",
    "RedisStore",
    "TokenManager",
    "TokenState",
    "TokenStore",
    "Workspace",
    "__version__",
]
