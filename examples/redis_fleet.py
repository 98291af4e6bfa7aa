"""One bot of a fleet: every process on every machine shares one sign-in through Redis."""

import os

from indigo_auth import RedisStore, TokenManager

store = RedisStore(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

with TokenManager.from_env(store=store) as manager:
    token = manager.get_token()  # one process signs in; the others wait and read its token
    stats = manager.stats
    how = "signed in" if stats.sign_ins else "took the fleet's token"
    print(f"bot {os.getpid()}: {how}, valid for {stats.expires_in:.0f} s more")
