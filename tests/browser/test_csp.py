"""Issue 14, item 9: pages run under the Content-Security-Policy without a violation, as the
browser console reports it (Chromium logs violations itself, not through ``console``: they are
read from the DevTools log and from ``securitypolicyviolation`` events)."""

from __future__ import annotations

import pytest

from tests.browser.conftest import Lab, Watched

pytestmark = pytest.mark.browser

LISTEN = """document.addEventListener('securitypolicyviolation', e => {
    (window.__csp = window.__csp || []).push(
        `${e.violatedDirective} ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber}`);
});"""


def _violations(w: Watched, url: str, then: str | None = None) -> list[str]:
    """What Chromium reports while ``url`` loads (and ``then`` runs on it)."""
    page = w.page
    logged: list[str] = []
    cdp = page.context.new_cdp_session(page)
    cdp.on("Log.entryAdded", lambda e: logged.append(e["entry"]["text"]))
    cdp.send("Log.enable")
    page.add_init_script(LISTEN)
    w.console_errors.clear()
    page.goto(url)
    page.wait_for_load_state("networkidle")
    if then:
        page.evaluate(then)
    page.wait_for_timeout(500)
    events = page.evaluate("window.__csp || []")
    cdp.detach()
    texts = logged + w.console_errors
    return events + [t for t in texts if "Content Security Policy" in t]


@pytest.mark.parametrize("path", ["/models", "/datasets", "/runs/new", "/"])
def test_the_page_has_no_csp_violation_in_the_console(
    browser_page: Watched, lab: Lab, path: str
) -> None:
    assert _violations(browser_page, lab.url + path) == [], path
    assert browser_page.console_errors == [], (path, browser_page.console_errors)


def test_the_check_sees_a_violation(browser_page: Watched, lab: Lab) -> None:
    """Runs last: an inline handler on /models is reported, so the check above is not blind."""
    inline = "var b = document.createElement('button'); b.setAttribute('onclick', '1'); b.click()"
    found = _violations(browser_page, lab.url + "/models", then=inline)
    assert any("script-src" in v for v in found), found
