"""A Trio nursery of pollers sharing one manager: the same code as on asyncio."""

import os

import httpx
import trio

from indigo_auth import AsyncTokenManager

INDIGO_BASE = os.environ.get("INDIGO_API_URL", "https://api.indigobrowser.com")


async def poll(client: httpx.AsyncClient, rounds: int, seen: list[int]) -> None:
    for _ in range(rounds):
        response = await client.get("/workspace/folders")
        seen.append(response.status_code)
        await trio.sleep(0.01)


async def main() -> None:
    seen: list[int] = []
    async with (
        AsyncTokenManager.from_env() as manager,
        httpx.AsyncClient(base_url=INDIGO_BASE, auth=manager) as client,
        trio.open_nursery() as nursery,
    ):
        for _ in range(20):
            nursery.start_soon(poll, client, 5, seen)
    print(f"{seen.count(200)} of {len(seen)} requests answered, {manager.stats.sign_ins} sign-in")


if __name__ == "__main__":
    trio.run(main)
