"""Debian's headless Chromium under Selenium, for the tests that need a real browser (MSE
playback, the commissioning console). A machine without it is told what to install: these tests
fail, never skip, so that a green run has used the browser."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
)  # fmt: skip


def browser_problem(purpose: str, chromium: Path = CHROMIUM, driver: Path = CHROMEDRIVER) -> str | None:
    """Why the browser tests cannot run here, naming what to install; None when they can."""
    missing = [
        f"{path} (Debian package {package})"
        for path, package in ((chromium, "chromium"), (driver, "chromium-driver"))
        if not path.is_file()
    ]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the Python package selenium (the `test` extra: pip install -e '.[test]')")
    if not missing:
        return None
    return (
        f"headless Chromium is needed {purpose}; missing: {', '.join(missing)}. Install Debian's"
        " packages: apt-get install --no-install-recommends chromium chromium-driver;"
        " scripts/bootstrap installs them in CI (CI=true or EDGE_AGENT_FLEET=1)."
    )


def headless_chromium(profile: Path, *flags: str) -> WebDriver:
    """A headless Chromium with its own profile directory and its console log kept; `flags` add to
    FLAGS. Only the system chromedriver is used: Selenium never looks for (or downloads) one."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, *flags, f"--user-data-dir={profile / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)
