#!/usr/bin/env python3
"""The browser console in a real browser (Debian's chromium, driven by
Playwright), against an operations center that a Rust test runs in process
(ops-center/tests/console_browser.rs).

The two talk over this script's stdin and stdout, one line each way:
  CMD alarm POST ZONE [fire]  -> the test stores a new alarm; answers
                                 "OK <submitted> <committed>", wall-clock ms
  CMD seed N                  -> N more open incidents; answers "OK"
  CHECK NAME ok|fail DETAIL   <- one result; the test asserts every one
  FIGURE TEXT                 <- a figure to print (never asserted)
  DONE                        <- the end
Anything else on stdout is passed through as log.

Usage: console.py --url https://127.0.0.1:PORT --pki DIR [--screenshot FILE]
"""

import argparse
import json
import sys
import time

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # WebAudio without a user's real sound device.
    "--autoplay-policy=no-user-gesture-required",
]
WAIT_MS = 15_000


def send(line):
    print(line, flush=True)


def command(line):
    """Asks the Rust side to do something; returns its answer."""
    send(f"CMD {line}")
    answer = sys.stdin.readline().strip()
    if not answer.startswith("OK"):
        raise RuntimeError(f"command {line!r} failed: {answer!r}")
    return answer[3:]


def check(name, ok, detail=""):
    detail = " ".join(str(detail).split())
    send(f"CHECK {name} {'ok' if ok else 'fail'} {detail}")


def checked(name):
    """Runs the decorated check; an exception is a failed check."""

    def wrap(fn):
        def run(*a, **kw):
            try:
                fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                check(name, False, f"{type(e).__name__}: {e}")

        return run

    return wrap


def context(browser, url, pki, who):
    certs = []
    if who is not None:
        certs = [{"origin": url, "certPath": f"{pki}/{who}.pem", "keyPath": f"{pki}/{who}.key"}]
    return browser.new_context(
        client_certificates=certs,
        # The server's certificate is from the region's own CA, which this
        # throwaway browser profile does not trust.
        ignore_https_errors=True,
        viewport={"width": 1400, "height": 860},
    )


def open_console(ctx, url):
    page = ctx.new_page()
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    return page


def row(page, incident):
    return page.locator(f"#row-{incident}")


def selected(page):
    return page.eval_on_selector("#queue", "q => q.getAttribute('aria-activedescendant')")


def select(page, incident):
    """Moves the selection with j/k until `incident` is selected, from the
    queue (where a person would be after tabbing to it)."""
    page.focus("#queue")
    for key in ["k"] * 50:
        if selected(page) == f"row-{incident}":
            break
        page.keyboard.press(key)
    for key in ["j"] * 2000:
        if selected(page) == f"row-{incident}":
            break
        page.keyboard.press(key)
    if selected(page) != f"row-{incident}":
        raise AssertionError(f"could not select {incident}: at {selected(page)}")
    # The detail follows the selection.
    page.wait_for_selector(f"#h-detail:has-text('{incident}')", timeout=WAIT_MS)


def version(page, incident):
    return page.evaluate(
        "id => fetch('/api/incidents/' + id).then(r => r.json()).then(d => d.incident.version)",
        incident,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--pki", required=True)
    p.add_argument("--screenshot")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()
    url, pki = args.url.rstrip("/"), args.pki

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS, headless=True)
        alice_ctx = context(browser, url, pki, "alice")  # analyst
        bob_ctx = context(browser, url, pki, "bob")  # supervisor
        alice = open_console(alice_ctx, url)
        bob = open_console(bob_ctx, url)

        run_feed(alice, bob)
        run_ack(alice, bob)
        run_conflict(alice, bob)
        run_filters(alice)
        run_analyst_cannot_escalate(alice)
        run_cross_origin(alice)
        run_keyboard_note(alice)
        run_plan(alice)
        run_views(alice, bob, url, pki, browser)
        run_history_report(alice, bob)
        run_contrast(bob)
        run_refused(browser, url, pki)
        if args.screenshot:
            select(bob, "inc-000001")
            bob.wait_for_selector("#timeline li", timeout=WAIT_MS)
            bob.screenshot(path=args.screenshot)
            send(f"screenshot written to {args.screenshot}")
        run_figures(browser, url, pki)
        browser.close()
    send("DONE")


@checked("feed_renders_and_updates_live")
def run_feed(alice, bob):
    for page in (alice, bob):
        row(page, "inc-000001").wait_for(timeout=WAIT_MS)
    # Sound is unlocked by a click, as a browser requires.
    alice.click("#shift")
    alice.wait_for_selector("body[data-shift='on']")
    before = alice.evaluate("window.vigil.announced")
    known = set(alice.evaluate("Object.keys(window.vigil.seenAt)"))
    submitted, _committed = (int(x) for x in command("alarm p-4 3 fire").split())
    new_id = None
    deadline = time.time() + WAIT_MS / 1000
    while time.time() < deadline and new_id is None:
        fresh = set(alice.evaluate("Object.keys(window.vigil.seenAt)")) - known
        new_id = min(fresh) if fresh else None
        if new_id is None:
            time.sleep(0.02)
    if new_id is None:
        raise AssertionError("the new incident never appeared")
    latency = alice.evaluate(f"window.vigil.seenAt['{new_id}']") - submitted
    send(f"FIGURE new incident to screen: {latency} ms ({new_id}, P1: alarm handed to the writer to its row on screen, commit included)")
    row(bob, new_id).wait_for(timeout=WAIT_MS)
    alice.wait_for_function(f"() => window.vigil.announced > {before}", timeout=WAIT_MS)
    text = alice.inner_text("#announce")
    if new_id not in text or "P1" not in text:
        raise AssertionError(f"announcement says {text!r}")
    check("feed_renders_and_updates_live", True, f"{new_id} in both contexts; announced: {text}")


@checked("ack_in_one_context_appears_in_another")
def run_ack(alice, bob):
    select(alice, "inc-000002")
    alice.keyboard.press("a")
    bob.wait_for_selector("#row-inc-000002[data-state='acknowledged']", timeout=WAIT_MS)
    check("ack_in_one_context_appears_in_another", True, "a in alice's page, acknowledged in bob's")


@checked("version_conflict_shown")
def run_conflict(alice, bob):
    # Bob opens the resolve dialog on inc-000003 (deciding on the version he
    # sees); meanwhile alice takes it; bob's resolve then meets a newer
    # version and the page says so.
    select(bob, "inc-000003")
    bob.keyboard.press("r")
    bob.wait_for_selector("#prompt[open]")
    select(alice, "inc-000003")
    alice.keyboard.press("s")
    bob.wait_for_selector("#row-inc-000003 .assignee:has-text('alice')", timeout=WAIT_MS)
    bob.select_option("#prompt-disposition", "TEST")
    bob.click("#prompt-ok")
    bob.wait_for_selector(".message.conflict", timeout=WAIT_MS)
    text = bob.inner_text("#message")
    if "changed since you saw it" not in text or "alice" not in text:
        raise AssertionError(f"conflict message: {text!r}")
    check("version_conflict_shown", True, text)


def run_filters(page):
    try:
        filters(page)
    finally:
        # Whatever happened, the next checks see the whole queue.
        page.select_option("#f-state", "")
        page.select_option("#f-post", "")
        page.uncheck("#f-mine")


@checked("filters_and_counts")
def filters(page):
    counts = page.inner_text("#counts")
    if "P1 1" not in counts or "acknowledged 1" not in counts:
        raise AssertionError(f"counts: {counts!r}")
    page.select_option("#f-state", "acknowledged")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#queue .row')].every(r => r.dataset.state === 'acknowledged')",
        timeout=WAIT_MS,
    )
    shown = page.eval_on_selector_all("#queue .row", "rows => rows.map(r => r.dataset.id)")
    page.select_option("#f-state", "")
    page.select_option("#f-post", "p-4")
    page.wait_for_function("() => document.querySelectorAll('#queue .row').length === 1", timeout=WAIT_MS)
    page.select_option("#f-post", "")
    page.check("#f-mine")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#queue .row .assignee')].every(a => a.textContent === 'alice')",
        timeout=WAIT_MS,
    )
    mine = page.eval_on_selector_all("#queue .row", "rows => rows.map(r => r.dataset.id)")
    page.uncheck("#f-mine")
    if shown != ["inc-000002"] or mine != ["inc-000003"]:
        raise AssertionError(f"acknowledged: {shown}; mine: {mine}")
    check("filters_and_counts", True, f"{counts}; state filter {shown}; post filter; mine {mine}")


@checked("analyst_cannot_escalate")
def run_analyst_cannot_escalate(alice):
    select(alice, "inc-000001")
    button = alice.locator("#act-escalate")
    if not button.is_disabled():
        raise AssertionError("the escalate button is enabled for an analyst")
    title = button.get_attribute("title")
    v = version(alice, "inc-000001")
    status, body = alice.evaluate(
        """([id, v]) => fetch('/api/incidents/' + id + '/escalate', {
               method: 'POST',
               headers: {'Content-Type': 'application/json', 'X-Vigil-Action': '1'},
               body: JSON.stringify({expected_version: v, reason: 'forged'})})
             .then(async r => [r.status, await r.text()])""",
        ["inc-000001", v],
    )
    if status != 403:
        raise AssertionError(f"forged escalate answered {status}: {body}")
    check("analyst_cannot_escalate", True, f"button disabled ({title}); forged request: {status} {body}")


@checked("change_without_the_header_refused")
def run_cross_origin(alice):
    v = version(alice, "inc-000001")
    status, body = alice.evaluate(
        """([id, v]) => fetch('/api/incidents/' + id + '/note', {
               method: 'POST', headers: {'Content-Type': 'application/json'},
               body: JSON.stringify({expected_version: v, text: 'x'})})
             .then(async r => [r.status, await r.text()])""",
        ["inc-000001", v],
    )
    if status != 403 or "X-Vigil-Action" not in body:
        raise AssertionError(f"answered {status}: {body}")
    check("change_without_the_header_refused", True, f"{status} {body}")


@checked("keyboard_shortcuts")
def run_keyboard_note(alice):
    select(alice, "inc-000001")
    first = selected(alice)
    alice.keyboard.press("j")
    moved = selected(alice)
    alice.keyboard.press("k")
    back = selected(alice)
    if moved == first or back != first:
        raise AssertionError(f"j/k: {first} -> {moved} -> {back}")
    alice.wait_for_selector("#h-detail:has-text('inc-000001')")
    alice.keyboard.press("n")
    alice.wait_for_selector("#prompt[open]")
    alice.keyboard.type("called the post; guard on the way")
    alice.keyboard.press("Tab")  # to Cancel
    alice.keyboard.press("Tab")  # to OK
    alice.keyboard.press("Enter")
    alice.wait_for_selector("#timeline li.tl-note:has-text('guard on the way')", timeout=WAIT_MS)
    check("keyboard_shortcuts", True, "j/k moved the selection; n, typing, Tab, Enter added a note")


@checked("plan_step_marked_in_the_browser")
def run_plan(alice):
    # inc-000001 is a burglary at p-1, whose plan (imported by the test)
    # has three steps; its record lists two contacts in calling order.
    select(alice, "inc-000001")
    alice.wait_for_selector("#plan li[data-step='3']", timeout=WAIT_MS)
    contacts = alice.eval_on_selector_all("#record ol.contacts li", "items => items.map(i => i.textContent)")
    secrets = alice.inner_text("#record .secrets")
    if len(contacts) != 2 or "Gate desk" not in contacts[0] or "Station" not in contacts[1]:
        raise AssertionError(f"contacts: {contacts}")
    if "withheld" not in secrets or "bluebird" in alice.inner_text("#record"):
        raise AssertionError(f"an analyst sees secrets: {secrets!r}")
    alice.click("#plan li[data-step='1'] .mark-done")
    alice.wait_for_selector("#prompt[open]")
    alice.fill("#prompt-text", "camera shows nobody")
    alice.click("#prompt-ok")
    alice.wait_for_selector("#plan li[data-step='1'].done", timeout=WAIT_MS)
    mark = alice.inner_text("#plan li[data-step='1'] .step-mark")
    if "alice" not in mark:
        raise AssertionError(f"step 1 mark: {mark!r}")
    # A mark on a version that is no longer current: 409 with the incident.
    v = version(alice, "inc-000001")
    status, body = alice.evaluate(
        """([id, v]) => fetch('/api/incidents/' + id + '/step', {
               method: 'POST',
               headers: {'Content-Type': 'application/json', 'X-Vigil-Action': '1'},
               body: JSON.stringify({expected_version: v - 1, step: 2, outcome: 'done'})})
             .then(async r => [r.status, await r.json()])""",
        ["inc-000001", v],
    )
    if status != 409 or body.get("current", {}).get("version") != v:
        raise AssertionError(f"stale step mark answered {status}: {body}")
    check("plan_step_marked_in_the_browser", True, f"step 1 checked off ({mark}); contacts {len(contacts)}; {secrets}; stale mark 409")


LOCAL_JS = """
(offsetMs) => {
  const d = new Date(Date.now() + offsetMs);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
"""


@checked("history_and_report_pages")
def run_history_report(alice, bob):
    # A post's row in the posts view opens its history.
    alice.click("#nav-posts")
    alice.click("tr[data-post='p-1']")
    alice.wait_for_selector("#history-body tr.h-incident[data-incident='inc-000001']", timeout=WAIT_MS)
    alice.click("#nav-history")
    alice.fill("#hist-post", "p-1")
    alice.click("#hist-load")
    alice.wait_for_selector("#history-body tr.h-incident[data-incident='inc-000001']", timeout=WAIT_MS)
    alice.wait_for_selector("#history-body tr.h-event[data-seq='1']", timeout=WAIT_MS)
    alice.wait_for_selector("#history-record ol.contacts li", timeout=WAIT_MS)
    items = alice.eval_on_selector_all("#history-body tr", "rows => rows.length")
    alice.click("#nav-report")
    note = alice.inner_text("#report-note")
    if "supervisors" not in note or alice.is_visible("#report-form"):
        raise AssertionError(f"analyst report page: {note!r}")
    alice.click("#nav-queue")
    bob.click("#nav-report")
    bob.fill("#rp-from", bob.evaluate(LOCAL_JS, -3_600_000))
    bob.fill("#rp-to", bob.evaluate(LOCAL_JS, 3_600_000))
    bob.click("#rp-show")
    bob.wait_for_selector("table.report tr[data-post='p-1']", timeout=WAIT_MS)
    with bob.expect_download() as d:
        bob.click("#rp-download")
    failure = d.value.failure()
    if failure:
        raise AssertionError(f"CSV download failed: {failure}")
    lines = open(d.value.path(), encoding="utf-8").read().splitlines()
    if not lines[0].startswith("post_id,alarm_events,") or not any(l.startswith("p-1,") for l in lines[1:]):
        raise AssertionError(f"CSV: {lines[:3]}")
    bob.click("#nav-queue")
    check("history_and_report_pages", True, f"history of p-1: {items} rows; report table and CSV of {len(lines) - 1} posts")


CONTRAST_JS = """
() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const worst = [];
  for (const el of document.querySelectorAll('body *')) {
    if (!el.checkVisibility || !el.checkVisibility()) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    worst.push([ratio, el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') + ' ' + el.textContent.trim().slice(0, 20)]);
  }
  worst.sort((x, y) => x[0] - y[0]);
  return worst.slice(0, 3);
}
"""


@checked("text_contrast")
def run_contrast(page):
    worst = page.evaluate(CONTRAST_JS)
    if not worst:
        raise AssertionError("no text found")
    if worst[0][0] < 4.5:
        raise AssertionError(f"below 4.5:1: {worst}")
    check("text_contrast", True, f"every visible text at least {worst[0][0]:.1f}:1 ({worst[0][1]})")


@checked("posts_and_replay_views")
def run_views(alice, bob, url, pki, browser):
    alice.click("#nav-posts")
    alice.wait_for_selector("tr[data-post='p-1']", timeout=WAIT_MS)
    alice.click("#nav-replay")
    note = alice.inner_text("#replay-note")
    if "engineers" not in note:
        raise AssertionError(f"analyst replay note: {note!r}")
    alice.click("#nav-queue")
    carol_ctx = context(browser, url, pki, "carol")  # engineer
    carol = open_console(carol_ctx, url)
    carol.click("#nav-replay")
    carol.fill("#r-post", "p-1")
    with carol.expect_download() as d:
        carol.click("#replay-form button[type='submit']")
    failure = d.value.failure()
    if failure:
        raise AssertionError(f"download failed: {failure}")
    path = d.value.path()
    lines = [json.loads(x) for x in open(path, encoding="utf-8") if x.strip()]
    if not lines or lines[0]["event"]["post_id"] != "p-1":
        raise AssertionError(f"replay download: {lines[:1]}")
    carol_ctx.close()
    check("posts_and_replay_views", True, f"posts table; replay download of {len(lines)} lines")


@checked("post_and_no_certificate_refused")
def run_refused(browser, url, pki):
    post_ctx = context(browser, url, pki, "p-9")
    page = post_ctx.new_page()
    response = page.goto(url + "/")
    status = response.status if response else None
    body = page.inner_text("body")
    post_ctx.close()
    if status != 403 or "role post" not in body:
        raise AssertionError(f"post certificate: {status} {body!r}")
    nobody = context(browser, url, pki, None)
    page = nobody.new_page()
    try:
        response = page.goto(url + "/", timeout=WAIT_MS)
        refused = f"answered {response.status if response else None}"
        ok = False
    except PlaywrightError as e:
        refused = str(e).splitlines()[0]
        ok = True
    nobody.close()
    if not ok:
        raise AssertionError(f"no certificate: {refused}")
    check("post_and_no_certificate_refused", True, f"post: 403; no certificate: {refused}")


def run_figures(browser, url, pki):
    n = 1000
    command(f"seed {n}")
    ctx = context(browser, url, pki, "bob")
    page = ctx.new_page()
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    first, event, snapshot = page.evaluate(
        "[window.vigil.firstPaintMs, window.vigil.firstEventMs, window.vigil.snapshotMs]"
    )
    rows = page.evaluate("document.querySelectorAll('#queue .row').length")
    send(
        f"FIGURE first paint with {rows} open incidents: {first:.0f} ms from navigation start "
        f"(first feed event at {event:.0f} ms, snapshot complete at {snapshot:.0f} ms, drawn at {first:.0f} ms)"
    )
    # Moving through the full queue by key: the time for 100 j presses
    # (Playwright's round trip per key included), and the page's own
    # render time per frame meanwhile.
    page.evaluate("window.vigil.renderMaxMs = 0")
    start = time.time()
    for _ in range(100):
        page.keyboard.press("j")
    page.evaluate("new Promise(r => requestAnimationFrame(() => r()))")
    took = (time.time() - start) * 1000
    last, worst = page.evaluate("[window.vigil.renderMs, window.vigil.renderMaxMs]")
    send(
        f"FIGURE 100 j presses with {rows} rows: {took:.0f} ms; queue render per frame "
        f"{last:.1f} ms last, {worst:.1f} ms worst"
    )
    ctx.close()


if __name__ == "__main__":
    main()
