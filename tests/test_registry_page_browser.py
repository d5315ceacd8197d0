"""The registry page in a real browser: Debian's Chromium, headless, driven by Selenium through
Debian's chromium-driver, against the real api-server of test_registry_api (SimpleAuthManager with a
named admin). Logs in through Airflow's own login page, opens /dataset-registry/, and checks what a
person sees: the projects, the versions table and its chart, one version (profile with NULLs marked,
pull commands, experiments), a diff, the dark theme, and the page inside the Airflow UI. Screenshots
go to the test's tmp folder (the path is printed).

Without Chromium the tests skip, except under CI (CI=true), where that is a failure: scripts/bootstrap.sh
installs it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import report_line
from test_registry_api import PREFIX, http, registry_ui  # noqa: F401 - the shared module-scoped stack

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60  # seconds for anything to appear


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) and os.access(path, os.X_OK)):
            return f"{path} is not installed (Debian packages chromium and chromium-driver; make setup installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements.txt)"
    return None


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(WAIT)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("registry-page-screenshots")
    yield folder
    report_line(request, f"[registry page] screenshots: {folder} ({', '.join(sorted(p.name for p in folder.glob('*.png')))})")


def _wait(browser, condition, what: str):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # a re-render between finding and reading elements is retried, not a failure
        return WebDriverWait(browser, WAIT, poll_frequency=0.25,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n{_text(browser)[:3000]}") from None


def _text(browser) -> str:
    from selenium.webdriver.common.by import By

    try:
        return browser.find_element(By.TAG_NAME, "body").text
    except Exception as exc:  # noqa: BLE001 - only for messages
        return f"<no body: {exc}>"


def _shot(browser, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    assert browser.save_screenshot(str(path)), f"no screenshot {path}"
    assert path.stat().st_size > 1000
    return path


@pytest.fixture(scope="module")
def logged_in(driver, registry_ui, shots):
    """Open the page without a session, follow its link to Airflow's login page, log in as admin."""
    from selenium.webdriver.common.by import By

    page = registry_ui["base"] + PREFIX + "/"
    driver.get(page)
    link = _wait(driver, lambda d: d.find_elements(By.LINK_TEXT, "Log in to Airflow"), "the login link")[0]
    _shot(driver, shots, "00-not-logged-in")
    link.click()
    user = _wait(driver, lambda d: d.find_elements(By.NAME, "username"), "Airflow's login form")[0]
    user.send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(registry_ui["password"])
    _shot(driver, shots, "01-airflow-login")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(driver, lambda d: d.current_url.startswith(page) and d.find_elements(By.CSS_SELECTOR, "#projects .card"),
          "the registry page after the login")
    return page


def test_projects_versions_and_chart(driver, logged_in, shots):
    from selenium.webdriver.common.by import By

    driver.get(logged_in)
    cards = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#projects .card"), "the projects")
    assert [c.get_attribute("data-project") for c in cards] == ["shop", "web"]
    assert "3 versions" in cards[0].text and "latest v3" in cards[0].text
    _shot(driver, shots, "02-projects")

    cards[0].click()
    rows = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#versions tbody tr"), "the versions table")
    assert [r.get_attribute("data-version") for r in rows] == ["v3", "v2", "v1"]
    first = rows[0].text
    assert "v3" in first and "2024-05-03 00:00 UTC → 2024-05-04 00:00 UTC" in first, first
    assert "5 (+1)" in first, first
    chart = driver.find_element(By.CSS_SELECTOR, "figure.chart svg")
    assert len(chart.find_elements(By.CSS_SELECTOR, "polyline")) == 2  # rows and bytes
    assert len(chart.find_elements(By.CSS_SELECTOR, "circle")) == 6
    _shot(driver, shots, "03-project-versions")


def test_a_diff_between_two_versions(driver, logged_in, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(logged_in + "#/p/shop")
    _wait(driver, lambda d: d.find_elements(By.ID, "diff-base"), "the diff picker")
    Select(driver.find_element(By.ID, "diff-base")).select_by_value("v1")
    Select(driver.find_element(By.ID, "diff-target")).select_by_value("v2")
    driver.find_element(By.CSS_SELECTOR, ".diffform button[type=submit]").click()
    keys = _wait(driver, lambda d: d.find_elements(By.ID, "diff-keys"), "the diff")[0]
    assert keys.text == "2 keys added · 1 removed · 1 changed", keys.text
    assert driver.find_element(By.ID, "diff-rows").text == "3 → 4 (+1)"
    columns = driver.find_element(By.ID, "diff-columns").text
    assert "name" in columns and "nulls" in columns, columns
    assert driver.current_url.endswith("#/p/shop/diff/v1/v2")
    _shot(driver, shots, "04-diff-v1-v2")

    driver.get(logged_in + "#/p/shop/diff/v2/v3")
    schema = _wait(driver, lambda d: [e for e in d.find_elements(By.ID, "diff-schema") if "qty" in e.text],
                   "the schema change")[0]
    assert "+ qty added" in schema.text, schema.text
    assert driver.find_element(By.ID, "diff-keys").text == "1 key added · 0 removed · 0 changed"
    _shot(driver, shots, "05-diff-v2-v3")


def test_one_version(driver, logged_in, shots):
    from selenium.webdriver.common.by import By

    driver.get(logged_in + "#/p/shop/v/v1")
    profile = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#profile tbody tr"), "the profile")
    assert [r.get_attribute("data-column") for r in profile] == ["id", "name", "price"]
    flagged = driver.find_elements(By.CSS_SELECTOR, "#profile td.nulls")
    assert len(flagged) == 1 and flagged[0].text == "1", [f.text for f in flagged]
    facts = driver.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "shop/v1" in facts and "2024-05-01 00:00 UTC → 2024-05-02 00:00 UTC" in facts, facts
    text = _text(driver)
    assert "git checkout shop/v1" in text and "dvc pull" in text and "--rev shop/v1" in text, text
    experiments = driver.find_element(By.ID, "experiments").text
    assert "shop_model" in experiments and "run-1" in experiments and "rmse 0.25" in experiments, experiments
    _shot(driver, shots, "06-version-v1")


def test_unknown_project_shows_the_apis_message(driver, logged_in):
    from selenium.webdriver.common.by import By

    driver.get(logged_in + "#/p/nope")
    alert = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[role=alert]"), "the error")[0]
    assert alert.text.startswith("404:") and "nope" in alert.text, alert.text


def test_dark_theme(driver, logged_in, shots):
    from selenium.webdriver.common.by import By

    def background():
        return driver.execute_script("return getComputedStyle(document.body).backgroundColor")

    driver.get(logged_in + "#/p/shop/v/v1")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#profile tbody tr"), "the profile")
    assert background() == "rgb(255, 255, 255)"
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    try:
        _wait(driver, lambda d: background() == "rgb(17, 19, 24)", "the dark background (system dark)")
        _shot(driver, shots, "07-version-v1-dark")
        driver.execute_script("localStorage.setItem('theme', 'light')")  # the Airflow UI's own choice wins
        driver.refresh()
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#profile tbody tr"), "the profile")
        assert background() == "rgb(255, 255, 255)"
    finally:
        driver.execute_script("localStorage.removeItem('theme')")
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def test_the_page_inside_the_airflow_ui(driver, logged_in, registry_ui, shots):
    """The navigation entry opens the page in the UI's iframe (same session, no second login)."""
    from selenium.webdriver.common.by import By

    driver.get(registry_ui["base"] + "/plugin/dataset-registry")
    frame = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"iframe[src*='{PREFIX}/']"), "the plugin iframe")[0]
    driver.switch_to.frame(frame)
    try:
        cards = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#projects .card"), "the projects in the iframe")
        assert [c.get_attribute("data-project") for c in cards] == ["shop", "web"]
    finally:
        driver.switch_to.default_content()
    _shot(driver, shots, "08-inside-airflow-ui")


def test_the_dataset_versions_tab_on_a_version_dag_page(driver, logged_in, registry_ui, shots):
    """The DAG page tab opens the page at the DAG's project (version_shop -> shop)."""
    from selenium.webdriver.common.by import By

    from airflow_stack import Api

    api = Api(int(registry_ui["base"].rsplit(":", 1)[1]))
    api.token = registry_ui["token"]
    api.wait("version_shop to be parsed", lambda: api.call("GET", "/api/v2/dags/version_shop"), 180)
    driver.get(registry_ui["base"] + "/dags/version_shop/plugin/dataset-versions")
    frame = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"iframe[src*='{PREFIX}/?dag=version_shop']"),
                  "the DAG tab's iframe")[0]
    driver.switch_to.frame(frame)
    try:
        versions = _wait(driver, lambda d: [r.get_attribute("data-version")
                                            for r in d.find_elements(By.CSS_SELECTOR, "#versions tbody tr")],
                         "shop's versions in the tab")
        assert versions == ["v3", "v2", "v1"]
    finally:
        driver.switch_to.default_content()
    _shot(driver, shots, "09-dag-tab-version_shop")
