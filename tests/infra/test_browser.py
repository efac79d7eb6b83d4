"""The catalogue page in a real browser: Chromium (the controller's distribution package) driven
by Playwright, through nginx on a web host, against the whole stack. The page loads with no
console errors and no accessibility violations (axe-core); typing a prefix shows the server's
suggestions, the keyboard moves through them, Escape closes them and Enter searches; a product
added through the page's form turns up in the page's search results.

Each test leaves a screenshot under build/browser/ (kept by CI). Destructive: adds products.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import test_app
from conftest import ROOT, ssh_tunnel, var_of, wait_for

pytestmark = pytest.mark.destructive
testinfra_hosts = ["ansible://web"]
ROLE = "app"
CHROMIUM = os.environ.get("STACKKIT_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
SCREENSHOTS = ROOT / "build" / "browser"
# The app's own fixtures: its site through nginx, and the image server on the controller.
site = test_app.site
images = test_app.images
member = test_app.member


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    assert Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM}: `make bootstrap` installs it"
    with sync_playwright() as playwright:
        # The controller runs the tests as root, where Chromium's own sandbox cannot start.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, chromium_sandbox=False)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, site, request):
    """A fresh page on the catalogue; the console errors it logs are collected, and a
    screenshot of where the test left it is kept."""
    # Chromium keeps its own trust store, without the local hosts' test CA; test_web checks the
    # chain against that CA, so the browser need not.
    context = browser.new_context(viewport={"width": 1024, "height": 800}, ignore_https_errors=True)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.console_errors = []
    tab.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda error: tab.console_errors.append(str(error)))
    tab.goto(site.base + "/")
    yield tab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=SCREENSHOTS / f"{request.node.name}.png", full_page=True)
    context.close()


def product(site, images) -> tuple[str, str]:
    """A product with a made-up name, added through the API and found by autocomplete."""
    name = test_app.word()
    title = f"{name.capitalize()} kettle"
    product_id = site.add(title, f"{images.base}/img/{name}")
    assert wait_for(lambda: product_id in site.autocomplete_ids(name[:5]), timeout=60)
    return name, title


def test_the_page_loads_with_no_console_errors_and_no_accessibility_violations(page):
    from axe_playwright_python.sync_playwright import Axe  # noqa: PLC0415

    assert page.title() == "Product catalogue"
    assert (
        page.get_by_role("searchbox", name="Search products").is_visible()
        or page.get_by_role("combobox", name="Search products").is_visible()
    )
    results = Axe().run(page)
    assert results.violations_count == 0, results.generate_report()
    assert page.console_errors == []


def test_typing_a_prefix_shows_the_servers_suggestions_and_the_keyboard_drives_them(
    page, site, images
):
    name, title = product(site, images)
    box = page.locator("#q")
    suggestions = page.locator("#q-suggestions")
    box.press_sequentially(name[:5], delay=50)
    option = suggestions.get_by_role("option", name=title)
    option.wait_for(state="visible")
    assert box.get_attribute("aria-expanded") == "true"

    box.press("ArrowDown")
    first = suggestions.get_by_role("option").first
    assert first.get_attribute("aria-selected") == "true"
    assert box.get_attribute("aria-activedescendant") == first.get_attribute("id")

    box.press("Escape")
    suggestions.wait_for(state="hidden")
    assert box.get_attribute("aria-expanded") == "false"

    # Down reopens the list; moving to the product's suggestion and Enter searches for it.
    box.press("ArrowDown")
    option.wait_for(state="visible")
    options = suggestions.get_by_role("option")
    index = [options.nth(i).inner_text() for i in range(options.count())].index(title)
    for _ in range(index + 1):
        box.press("ArrowDown")
    assert option.get_attribute("aria-selected") == "true"
    with page.expect_navigation():
        box.press("Enter")
    assert re.search(r"[?&]q=", page.url)
    assert box.input_value() == title
    assert page.locator("ol.results li").filter(has_text=title).count() == 1
    assert page.console_errors == []


def test_a_product_added_through_the_form_appears_in_the_results(page, site, images, member):
    page.get_by_role("link", name="Sign in").click()
    page.get_by_label("Username").fill(member[0])
    page.get_by_label("Password").fill(member[1])
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    name = test_app.word()
    title = f"{name.capitalize()} teapot"
    page.get_by_label("Title").fill(title)
    page.get_by_label("Image url").fill(f"{images.base}/img/{name}")
    page.get_by_label("Description").fill("Added through the page in a real browser.")
    with page.expect_navigation():
        page.get_by_role("button", name="Add product").click()
    assert page.get_by_text("Accepted: product").is_visible()

    def listed() -> bool:
        page.goto(f"{site.base}/?q={name}")
        return page.locator("ol.results li").filter(has_text=title).count() == 1

    assert wait_for(listed, timeout=60, interval=1)
    assert page.console_errors == []


def test_the_monitoring_console_shows_the_catalogues_figures(
    browser, site, images, inventory_hosts
):
    """The one page to look at (docs/monitoring.md): /consoles/catalogue.html on the monitor
    host's Prometheus, through the SSH tunnel the operator opens, in the browser. A product
    added through the API shows as a request of the `products` view and as products accepted;
    the page's screenshot is kept with the others."""
    monitors = inventory_hosts("monitor")
    if not monitors:
        pytest.skip("no monitor host in this inventory")
    name = test_app.word()
    site.add(f"{name.capitalize()} lantern", f"{images.base}/img/{name}")
    monitor = monitors[0]
    address = var_of(monitor, "monitoring_listen_address", "monitoring")
    port = var_of(monitor, "monitoring_prometheus_port", "monitoring")
    with ssh_tunnel(monitor, address, port) as local:
        context = browser.new_context(viewport={"width": 1024, "height": 800})
        tab = context.new_page()
        tab.set_default_timeout(15_000)
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        requests_table = tab.locator("h2:has-text('Requests per view') + table")
        products_table = tab.locator("h2:has-text('Products') + table")

        def counted() -> bool:
            tab.goto(f"http://127.0.0.1:{local}/consoles/catalogue.html")
            accepted = products_table.locator("tr").nth(1).locator("td").first.inner_text()
            view = requests_table.locator("tr").filter(has_text="products")
            return view.count() == 1 and accepted not in ("n/a", "0")

        # A scrape interval or two after the API's requests.
        found = wait_for(counted, timeout=90, interval=5)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=SCREENSHOTS / "monitoring-console.png", full_page=True)
        context.close()
    assert found, "the console shows no request of the products view or no product accepted"
    assert errors == []
