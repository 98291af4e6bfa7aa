"""Start an Indigo browser profile through the launcher and drive it with Selenium."""

import os

import requests
from selenium import webdriver
from selenium.webdriver.chromium.options import ChromiumOptions

from indigo_auth import TokenManager

LAUNCHER = os.environ.get("INDIGO_LAUNCHER_URL", "https://launcher.indigobrowser.com:45011")
FOLDER_ID = os.environ["INDIGO_FOLDER_ID"]
PROFILE_ID = os.environ["INDIGO_PROFILE_ID"]


def main() -> None:
    # The launcher is the other host that gets the bearer; any other host gets none.
    with TokenManager.from_env(launcher_url=LAUNCHER) as manager, requests.Session() as session:
        session.auth = manager
        response = session.get(
            f"{LAUNCHER}/api/v2/profile/f/{FOLDER_ID}/p/{PROFILE_ID}/start",
            params={"automation_type": "selenium"},
            timeout=120,
        )
        response.raise_for_status()
        port = response.json()["data"]["port"]

        driver = webdriver.Remote(
            command_executor=f"http://127.0.0.1:{port}", options=ChromiumOptions()
        )
        try:
            driver.get("https://example.com")
            print(driver.title)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
