"""Headless Chromium for the tests of the pages a person opens (the translate gallery, the Serve page).

Debian's `chromium` and `chromium-driver` packages, driven by Selenium through the driver on disk (Selenium
downloads nothing). Where they are missing, they are installed with apt-get when that can be done (root, apt-get
present); otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"
DEBIAN_PACKAGES = ("chromium", "chromium-driver")


def _find() -> tuple[str | None, str | None]:
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    return browser, shutil.which(DRIVER)


def _install() -> str | None:
    """apt-get install the Debian packages; returns why it could not, or None."""
    if not shutil.which("apt-get"):
        return "no apt-get on this machine to install Chromium"
    if os.geteuid() != 0:
        return f"Chromium is not installed and installing it needs root: apt-get install {' '.join(DEBIAN_PACKAGES)}"
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *DEBIAN_PACKAGES]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for attempt in (command, ["apt-get", "update", "-q"], command):  # a fresh machine has no package lists
        try:
            done = subprocess.run(attempt, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return f"{' '.join(attempt)} did not finish within 15 minutes"
        if done.returncode == 0 and attempt is command and all(_find()):
            return None
    return f"apt-get could not install {' '.join(DEBIAN_PACKAGES)}: {done.stderr.strip()[-300:]}"


def start_browser():
    """A headless Chromium WebDriver (1280x1000 window), or pytest.skip with the reason it cannot start."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is a test extra: pip install -e .[test]"
    )
    from selenium.webdriver.chrome.service import Service

    browser, driver = _find()
    if not (browser and driver):
        reason = _install()
        if reason:
            pytest.skip(reason)
        browser, driver = _find()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--allow-file-access-from-files",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def image_state(driver, element_id: str | None = None, css: str | None = None) -> list[dict]:
    """For each matching <img>: whether it finished loading and its natural size (0 x 0 when it failed)."""
    script = """
        const found = arguments[0] ? [document.getElementById(arguments[0])] : [...document.querySelectorAll(arguments[1])];
        return found.map((i) => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth,
                                  height: i.naturalHeight}));
    """
    return driver.execute_script(script, element_id, css)
