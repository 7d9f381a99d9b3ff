"""The console in a real browser (Debian's headless chromium through /usr/bin/chromedriver, driven by
Selenium with selenium-manager kept offline) against a real `creditgate serve` in front of LiteLLM,
PostgreSQL and Redis (tests/e2e/conftest.py's gateway).

An org admin signs in with their key, sees every page of their org with the numbers the admin API gives,
creates a scoped key in the form that then serves a chat and, revoked in the form, is refused at once,
changes the budget alert thresholds, is refused another org, and signs out; a post without the CSRF
token, or from another origin, is refused; the operator signs in with the admin token, onboards an org in
one form, and the key shown once serves a real chat request; refreshing the result page creates nothing.
Screenshots go to the session's temporary folder (`console-screenshots*`); with
CREDITGATE_CONSOLE_SCREENSHOT=1 the usage page also replaces docs/console.png, the README's picture (a
plain run leaves the checkout unchanged).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.conftest import Gateway, Member, gateway, make_member  # noqa: F401 - fixture

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console.png"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are required (scripts/install-system.sh installs them)")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1500", "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-screenshots")


def sign_in(driver: WebDriver, gw: Gateway, credential: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{gw.url}/console/login")
    driver.find_element(By.ID, "f-credential").send_keys(credential)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_url(driver, f"{gw.url}/console")


def wait_url(driver: WebDriver, url: str) -> None:
    """A click's navigation has ended on `url` (a click returns before the next page has loaded)."""
    WebDriverWait(driver, 15).until(expected_conditions.url_to_be(url))


def visit(driver: WebDriver, url: str) -> None:
    """Opens `url` and asserts it is a page, not a refusal (the refusal's text is the failure message)."""
    driver.get(url)
    errors = driver.find_elements(By.ID, "error")
    assert not errors, (driver.title, errors[0].text)
    assert driver.current_url == url, driver.current_url


def mc(driver: WebDriver, element_id: str) -> int:
    return int(driver.find_element(By.ID, element_id).get_attribute("data-mc") or "x")


def column(driver: WebDriver, table: str, index: int, attribute: str = "data-mc") -> list[int]:
    cells = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr td:nth-child({index})")
    return [int(c.get_attribute(attribute) or "0") for c in cells]


def keyed(driver: WebDriver, table: str, index: int, attribute: str = "data-mc") -> dict[str, int]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    out = {}
    for row in rows:
        cells = row.find_elements(By.TAG_NAME, "td")
        out[cells[0].get_attribute("data-key") or ""] = int(cells[index - 1].get_attribute(attribute) or "0")
    return out


def chat(member: Member, n: int, model: str = "fake-small") -> list[str]:
    ids = []
    for i in range(n):
        answer = member.client().chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"hello {i}"}])
        ids.append(answer.headers["x-request-id"])
    return ids


def test_org_admin_sees_their_org_with_the_apis_numbers(browser: WebDriver, gateway: Gateway,  # noqa: F811
                                                       shots: Path) -> None:
    admin = make_member(gateway, role="admin", bound=True, allocation=5_000_000, period="month")
    member = make_member(gateway, org_id=admin.org_id)
    ids = chat(admin, 2) + chat(member, 1, "fake-gpt-4o-mini")
    other = make_member(gateway, role="admin", bound=True)
    org = admin.org_id
    sign_in(browser, gateway, admin.key)
    assert org in browser.page_source and other.org_id not in browser.page_source
    browser.save_screenshot(str(shots / "01-org-admin-home.png"))

    visit(browser, f"{gateway.url}/console/orgs/{org}")
    api = admin.get(f"/admin/orgs/{org}").json()
    for name in ("balance", "held", "available", "granted", "overage"):
        assert mc(browser, f"pool-{name}") == api["pool"][name], name
    members = {m["user_id"]: m["allocation"] for m in api["members"]}
    rows = browser.find_elements(By.CSS_SELECTOR, "#members tbody tr")
    assert len(rows) == len(members) == 2
    for row in rows:
        user = row.find_element(By.CSS_SELECTOR, "td[data-user]").get_attribute("data-user") or ""
        cells = [c.get_attribute("data-mc") for c in row.find_elements(By.TAG_NAME, "td")]
        allocation = members[user]
        limit = None if allocation["limit"] is None else str(allocation["limit"])
        assert [cells[3], cells[5], cells[6], cells[7]] == [
            limit, str(allocation["used"]), str(allocation["held"]), str(allocation["available"])]
    assert column(browser, "grants", 3) == [100_000_000]
    browser.save_screenshot(str(shots / "02-overview.png"))

    visit(browser, f"{gateway.url}/console/orgs/{org}/usage?days=7")
    for group, table in (("model", "usage-model"), ("user", "usage-user"), ("day", "usage-day")):
        api_rows = admin.get(f"/admin/orgs/{org}/usage", params={"group_by": group}).json()["data"]
        assert keyed(browser, table, 5) == {r[group]: r["charged_millicredits"] for r in api_rows}, group
        assert keyed(browser, table, 2, "data-n") == {r[group]: r["requests"] for r in api_rows}, group
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart-byok rect[data-series=platform]")
    assert sum(int(b.get_attribute("data-value") or "0") for b in bars) == 3
    browser.save_screenshot(str(shots / "03-usage.png"))
    if os.environ.get("CREDITGATE_CONSOLE_SCREENSHOT") == "1":  # refresh the README's picture on purpose only
        shutil.copyfile(shots / "03-usage.png", DOCS)

    visit(browser, f"{gateway.url}/console/orgs/{org}/requests")
    shown = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#requests tbody tr td:first-child a")]
    assert shown == ids[::-1]
    browser.find_element(By.LINK_TEXT, ids[0]).click()
    WebDriverWait(browser, 15).until(expected_conditions.presence_of_element_located((By.ID, "request-id")))
    record = admin.get(f"/v1/requests/{ids[0]}").json()
    assert mc(browser, "charged") == record["charged_millicredits"]
    assert mc(browser, "held") == record["held_millicredits"]
    assert browser.find_element(By.ID, "usage-source").text == record["usage_source"] == "provider"
    browser.save_screenshot(str(shots / "04-request.png"))

    visit(browser, f"{gateway.url}/console/orgs/{org}/ledger?limit=2")
    entries = admin.get(f"/admin/orgs/{org}/ledger", params={"limit": 2}).json()["data"]
    assert [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#ledger tbody tr td:first-child")] == [
        e["id"] for e in entries]
    assert column(browser, "ledger", 3) == [e["amount_millicredits"] for e in entries]
    browser.find_element(By.LINK_TEXT, "Older →").click()
    WebDriverWait(browser, 15).until(expected_conditions.url_contains("after="))
    older = admin.get(f"/admin/orgs/{org}/ledger", params={"limit": 2, "after": entries[-1]["id"]}).json()["data"]
    assert [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#ledger tbody tr td:first-child")] == [
        e["id"] for e in older]
    browser.save_screenshot(str(shots / "05-ledger.png"))

    visit(browser, f"{gateway.url}/console/orgs/{org}/keys")
    keys = admin.get("/admin/keys", params={"org_id": org}).json()["data"]
    assert sorted(c.text for c in browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr td:first-child")) == sorted(
        k["id"] for k in keys)
    assert admin.key not in browser.page_source and member.key not in browser.page_source
    browser.save_screenshot(str(shots / "06-keys.png"))
    scoped_key(browser, gateway, admin, member, shots)
    thresholds(browser, gateway, admin, shots)

    browser.get(f"{gateway.url}/console/orgs/{other.org_id}")
    assert "403" in browser.title and browser.find_element(By.ID, "error").get_attribute("data-code") == "not_a_member"
    browser.get(f"{gateway.url}/console/onboard")
    assert browser.find_element(By.ID, "error").get_attribute("data-code") == "operator_only"

    refused_posts(browser, gateway)
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_url(browser, f"{gateway.url}/console/login")
    browser.get(f"{gateway.url}/console/orgs/{org}")
    assert browser.current_url == f"{gateway.url}/console/login"


def scoped_key(browser: WebDriver, gw: Gateway, admin: Member, member: Member, shots: Path) -> None:
    """The admin creates a scoped key for the member in the form, it serves a chat, its usage is the API's,
    and once revoked in the form the gateway refuses it (the key cache's broadcast, within a second)."""
    org = admin.org_id
    before = len(admin.get("/admin/keys", params={"org_id": org}).json()["data"])
    Select(browser.find_element(By.ID, "f-user_id")).select_by_value(member.user_id)
    for name, value in (("name", "ci"), ("models", "fake-small"), ("limit_credits", "50")):
        browser.find_element(By.ID, f"f-{name}").send_keys(value)
    Select(browser.find_element(By.ID, "f-limit_period")).select_by_value("day")
    browser.find_element(By.CSS_SELECTOR, "#create-key button").click()
    WebDriverWait(browser, 15).until(expected_conditions.presence_of_element_located((By.ID, "new-key")))
    key = browser.find_element(By.ID, "new-key").text
    key_id = browser.find_element(By.CSS_SELECTOR, "#keys tbody td[data-key]").get_attribute("data-key") or ""
    assert key.startswith("sk-cg-") and key not in browser.current_url
    browser.save_screenshot(str(shots / "07-key-created.png"))
    browser.refresh()  # re-posts the create form: its one-time token shows the key made, creates nothing
    if expected_conditions.alert_is_present()(browser):
        browser.switch_to.alert.accept()
    WebDriverWait(browser, 15).until(expected_conditions.presence_of_element_located((By.ID, "replayed")))
    assert key not in browser.page_source and key_id in browser.page_source
    assert [k["id"] for k in admin.get("/admin/keys", params={"org_id": org}).json()["data"]].count(key_id) == 1
    assert len(admin.get("/admin/keys", params={"org_id": org}).json()["data"]) == before + 1
    scoped = Member(org, member.user_id, key_id, key, gw)
    chat(scoped, 1)
    refused = scoped.get("/v1/models/fake-gpt-4o-mini")
    assert refused.status_code in (403, 404), refused.text  # outside its models
    visit(browser, f"{gw.url}/console/orgs/{org}/keys/{key_id}")
    listed = admin.get("/admin/keys", params={"org_id": org}).json()["data"]
    usage = next(k for k in listed if k["id"] == key_id)["usage"]
    assert usage["used"] > 0 and (mc(browser, "key-used"), mc(browser, "key-available")) == (
        usage["used"], usage["available"])
    browser.save_screenshot(str(shots / "08-key.png"))
    browser.find_element(By.CSS_SELECTOR, "#revoke-key button").click()
    WebDriverWait(browser, 15).until(expected_conditions.text_to_be_present_in_element((By.ID, "key-revoked"), "UTC"))
    answer = scoped.get("/v1/credits")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "revoked_api_key", answer.text


def thresholds(browser: WebDriver, gw: Gateway, admin: Member, shots: Path) -> None:
    """The budget alerts page shows the API's thresholds; the form changes them as the PUT does."""
    org = admin.org_id
    visit(browser, f"{gw.url}/console/orgs/{org}/alerts")
    assert browser.find_element(By.ID, "thresholds-pool").text == "50, 80, 100"
    field = browser.find_element(By.ID, "f-pool")
    field.clear()
    field.send_keys("25, 75")
    browser.find_element(By.CSS_SELECTOR, "#thresholds-form button").click()
    WebDriverWait(browser, 15).until(expected_conditions.text_to_be_present_in_element((By.ID, "thresholds-pool"),
                                                                                       "25, 75"))
    assert admin.get(f"/admin/orgs/{org}/alert-thresholds").json() == {"pool": [25, 75], "allocation": [50, 80, 100]}
    browser.save_screenshot(str(shots / "09-alerts.png"))


def refused_posts(browser: WebDriver, gw: Gateway) -> None:
    """With the browser's own session cookie: no CSRF token, a wrong one, or another origin is 403."""
    cookie = browser.get_cookie("cg_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    jar = {"cg_console": cookie["value"]}
    with httpx.Client(base_url=gw.url, cookies=jar) as http:
        origin = {"origin": gw.url}
        assert http.post("/console/logout", data={"other": "1"}, headers=origin).status_code == 403
        assert http.post("/console/logout", data={"csrf": "forged"}, headers=origin).status_code == 403
        csrf = browser.find_element(By.CSS_SELECTOR, "form.logout input[name=csrf]").get_attribute("value")
        evil = {"origin": "http://evil.test"}
        assert http.post("/console/logout", data={"csrf": csrf}, headers=evil).status_code == 403
        assert http.post("/console/logout", data={"csrf": csrf}).status_code == 403  # neither Origin nor Referer


def test_operator_onboards_in_one_form_and_the_key_serves_a_chat(browser: WebDriver, gateway: Gateway,  # noqa: F811
                                                                shots: Path) -> None:
    sign_in(browser, gateway, gateway.env["CREDITGATE_ADMIN_TOKEN"])
    assert browser.find_element(By.ID, "orgs")
    assert gateway.env["CREDITGATE_ADMIN_TOKEN"] not in browser.page_source
    browser.save_screenshot(str(shots / "10-operator-orgs.png"))
    browser.get(f"{gateway.url}/console/onboard")
    email = f"new.admin.{secrets.token_hex(4)}@onboard.test"
    fill: dict[str, str] = {"org_name": "Onboarded Ltd", "grant_credits": "250.5", "email": email,
                            "user_name": "New Admin", "allocation_credits": "20", "key_name": "laptop"}
    for name, value in fill.items():
        element = browser.find_element(By.ID, f"f-{name}")
        element.clear()
        element.send_keys(value)
    Select(browser.find_element(By.ID, "f-tier")).select_by_value("starter")
    Select(browser.find_element(By.ID, "f-role")).select_by_value("admin")
    Select(browser.find_element(By.ID, "f-period")).select_by_value("week")
    browser.save_screenshot(str(shots / "11-onboard-form.png"))
    browser.find_element(By.CSS_SELECTOR, "#onboard button").click()
    WebDriverWait(browser, 15).until(expected_conditions.presence_of_element_located((By.ID, "new-key")))
    key = browser.find_element(By.ID, "new-key").text
    assert key.startswith("sk-cg-") and key not in browser.current_url
    browser.save_screenshot(str(shots / "12-onboard-result.png"))
    org = re.search(r"/console/orgs/(org_\w+)", browser.page_source)
    assert org is not None
    org_id = org.group(1)

    detail: dict[str, Any] = gateway.admin.get(f"/admin/orgs/{org_id}")
    assert (detail["name"], detail["tier"], detail["pool"]["granted"]) == ("Onboarded Ltd", "starter", 250_500)
    [person] = detail["members"]
    assert (person["email"], person["role"], person["allocation_millicredits"], person["allocation_period"]) == (
        email, "admin", 20_000, "week")
    audit = gateway.admin.get(f"/admin/audit?org_id={org_id}")["data"]
    assert {(a["actor"], a["action"]) for a in audit} >= {("operator", "org.create"), ("operator", "org.grant"),
                                                           ("operator", "key.create")}
    everything = gateway.admin.get("/admin/audit?limit=500")["data"]
    assert ("operator", "user.create", person["user_id"]) in {
        (a["actor"], a["action"], a["target"]) for a in everything}
    answer = Member(org_id, person["user_id"], "", key, gateway).client().chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": "first request"}])
    assert answer.http_response.status_code == 200
    orgs = len(gateway.admin.get("/admin/orgs?limit=500")["data"])
    browser.refresh()  # re-posts the form: the same one-time token shows the first run, creates nothing
    if expected_conditions.alert_is_present()(browser):
        browser.switch_to.alert.accept()
    WebDriverWait(browser, 15).until(expected_conditions.presence_of_element_located((By.ID, "replayed")))
    assert key not in browser.page_source and org_id in browser.page_source
    assert len(gateway.admin.get("/admin/orgs?limit=500")["data"]) == orgs
    browser.save_screenshot(str(shots / "13-onboard-refreshed.png"))
    browser.get(f"{gateway.url}/console/onboard")  # the key is never shown again
    assert key not in browser.page_source
    visit(browser, f"{gateway.url}/console/orgs/{org_id}/requests")
    assert browser.find_element(By.CSS_SELECTOR, "#requests tbody tr td:first-child a").text == answer.headers[
        "x-request-id"]
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_url(browser, f"{gateway.url}/console/login")


def test_revoking_the_key_ends_its_console_session(browser: WebDriver, gateway: Gateway) -> None:  # noqa: F811
    admin = make_member(gateway, role="admin", bound=True)
    sign_in(browser, gateway, admin.key)
    visit(browser, f"{gateway.url}/console/orgs/{admin.org_id}")
    gateway.admin.revoke(admin.key_id)
    browser.get(f"{gateway.url}/console/orgs/{admin.org_id}")
    assert browser.current_url == f"{gateway.url}/console/login"
