"""An asyncio service: a hundred concurrent workers, one manager, one sign-in."""

import asyncio
import os

import httpx

from indigo_auth import AsyncTokenManager

INDIGO_BASE = os.environ.get("INDIGO_API_URL", "https://api.indigobrowser.com")


async def count_folders(client: httpx.AsyncClient) -> int:
    response = await client.get("/workspace/folders")
    response.raise_for_status()
    return len(response.json()["data"]["folders"])


async def main() -> None:
    # `async with manager` adds the background refresher: workers never wait on a renewal.
    async with (
        AsyncTokenManager.from_env() as manager,
        httpx.AsyncClient(base_url=INDIGO_BASE, auth=manager) as client,
    ):
        counts = await asyncio.gather(*(count_folders(client) for _ in range(100)))
        print(f"{len(counts)} workers, {sum(counts)} folders, {manager.stats.sign_ins} sign-in")


if __name__ == "__main__":
    asyncio.run(main())
