"""List the folders of an Indigo workspace with requests, in the style of the vendor's sample."""

import os

import requests

from indigo_auth import TokenManager

INDIGO_BASE = os.environ.get("INDIGO_API_URL", "https://api.indigobrowser.com")
HEADERS = {"Accept": "application/json"}

# INDIGO_EMAIL and INDIGO_PASSWORD (or INDIGO_PASSWORD_MD5) from the environment.
manager = TokenManager.from_env()


def list_folders() -> list[dict]:
    response = requests.get(
        f"{INDIGO_BASE}/workspace/folders", headers=HEADERS, auth=manager, timeout=30
    )
    response.raise_for_status()
    return response.json()["data"]["folders"]


if __name__ == "__main__":
    with manager:
        for folder in list_folders():
            print(folder["folder_id"], folder["name"])
