"""Many threads, one httpx client, one token: a scraper that signs in once."""

import os
from concurrent.futures import ThreadPoolExecutor

import httpx

from indigo_auth import TokenManager

INDIGO_BASE = os.environ.get("INDIGO_API_URL", "https://api.indigobrowser.com")


def main() -> None:
    with (
        TokenManager.from_env() as manager,
        httpx.Client(base_url=INDIGO_BASE, auth=manager, timeout=30) as client,
    ):

        def count_folders(page: int) -> int:
            response = client.get("/workspace/folders")
            response.raise_for_status()  # a 401 was already renewed and retried once
            return len(response.json()["data"]["folders"])

        with ThreadPoolExecutor(max_workers=16) as pool:
            counts = list(pool.map(count_folders, range(64)))
        print(f"{len(counts)} pages, {sum(counts)} folders, {manager.stats.sign_ins} sign-in")


if __name__ == "__main__":
    main()
