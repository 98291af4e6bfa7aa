from __future__ import annotations

import indigo_auth
import indigo_auth.testing


def test_public_names_are_exactly_the_intended_ones() -> None:
    assert sorted(indigo_auth.__all__) == indigo_auth.__all__
    assert set(indigo_auth.__all__) == {
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
    }
    public = {name for name in dir(indigo_auth) if not name.startswith("_")}
    public -= {"annotations", "testing"}
    assert public <= set(indigo_auth.__all__)


def test_public_objects_are_documented_and_exported_from_the_package() -> None:
    for name in indigo_auth.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(indigo_auth, name)
        assert obj.__doc__, name
        assert obj.__module__.startswith("indigo_auth"), name


def test_testing_names() -> None:
    assert sorted(indigo_auth.testing.__all__) == indigo_auth.testing.__all__
    assert {"Fault", "IndigoEmulator"} <= set(indigo_auth.testing.__all__)


def test_errors_derive_from_one_base() -> None:
    for name in indigo_auth.__all__:
        obj = getattr(indigo_auth, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, indigo_auth.IndigoAuthError)
