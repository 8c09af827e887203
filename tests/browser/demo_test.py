#!/usr/bin/env python3
"""Drives GET /demo in headless Chromium through the load balancer (scripts/browser-test.sh starts everything).

Checks, in a real browser with the page's real Content-Security-Policy:
  - the page loads without creating a session (no cookie) and without CSP violations or script errors;
  - six clicks on "count" show 6, and at least two instance names were displayed on the way;
  - the session id never appears in the page (only a 6-hex fingerprint);
  - "visit" stores userName, "regenerate" changes the fingerprint and empties the data;
  - "log out" resets the count to 0 and the browser drops the cookie.
Saves screenshots (PNG) and prints what it saw. Exit status 0 when every check holds.
"""

import argparse
import json
import re
import sys
import time
import urllib.parse

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

failures = []


def check(condition, message):
    print(("ok   " if condition else "FAIL ") + message)
    if not condition:
        failures.append(message)


def make_driver(chromium, chromedriver):
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,1150", "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def idle(driver, timeout=10):
    """Waits until the page has finished its current action (the script sets data-busy while it works)."""
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body && !document.body.dataset.busy"))


def text(driver, element_id):
    return driver.find_element(By.ID, element_id).text.strip()


def click(driver, button_id):
    driver.find_element(By.ID, button_id).click()
    # The click handler marks the page busy synchronously; wait for the fetches and the redraw to finish.
    idle(driver)


def session_id(driver):
    cookie = driver.get_cookie("connect.sid")
    if not cookie:
        return None
    value = urllib.parse.unquote(cookie["value"])  # s:<id>.<signature>
    return value[2:].rsplit(".", 1)[0] if value.startswith("s:") else None


def seen_instances(driver):
    return [chip.text.strip() for chip in driver.find_elements(By.CSS_SELECTOR, "#seen .chip")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the demo page through the balancer, e.g. http://127.0.0.1:8080/demo")
    parser.add_argument("--screenshot", required=True, help="PNG path for the page after six counts")
    parser.add_argument("--final-screenshot", help="PNG path for the page after logging out")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args()

    driver = make_driver(args.chromium, args.chromedriver)
    try:
        driver.get(args.url)
        idle(driver)
        check(driver.title.startswith("EvServer"), f"page loaded: {driver.title!r}")
        check(driver.get_cookie("connect.sid") is None, "opening /demo created no session cookie")
        check(text(driver, "views") == "0", f"views start at 0 (shown: {text(driver, 'views')})")
        check(text(driver, "state") == "none yet", f"no session yet (shown: {text(driver, 'state')})")

        instances = []
        for expected in range(1, 7):
            click(driver, "count")
            shown = text(driver, "views")
            instances.append(text(driver, "instance"))
            check(shown == str(expected), f"click {expected} on count shows {shown}, answered by {instances[-1]}")
        seen = seen_instances(driver)
        print(f"     instances displayed after each click: {instances}; chips: {seen}")
        check(text(driver, "views") == "6", "six clicks on count show 6")
        check(len(set(instances)) >= 2 and len(seen) >= 2, f"at least two instance names displayed: {sorted(set(seen))}")

        sid = session_id(driver)
        check(sid is not None and len(sid) == 32, "the browser holds a session cookie")
        html = driver.page_source
        body = driver.find_element(By.TAG_NAME, "body").text
        check(sid is not None and sid not in html and sid not in body, "the session id appears nowhere in the page")
        fingerprint = text(driver, "fingerprint")
        check(re.fullmatch(r"[0-9a-f]{6}", fingerprint) is not None, f"a 6-hex fingerprint is shown: {fingerprint}")
        ttl = text(driver, "ttl")
        check(re.search(r"\d+ h", ttl) is not None, f"the remaining TTL is shown: {ttl}")
        data = json.loads(text(driver, "data"))
        check(data.get("views") == 6, f"the session data shows views 6: {data}")
        driver.save_screenshot(args.screenshot)
        print(f"     screenshot: {args.screenshot}")

        click(driver, "visit")
        data = json.loads(text(driver, "data"))
        check(data.get("userName") == "Aditya@123", f"visit stored userName: {data}")

        click(driver, "regenerate")
        new_sid = session_id(driver)
        check(new_sid is not None and new_sid != sid, "regenerate gave the browser a new session id")
        check(text(driver, "fingerprint") != fingerprint, "regenerate changed the fingerprint")
        check(text(driver, "views") == "0", f"regenerate emptied the session (views {text(driver, 'views')})")

        click(driver, "count")
        click(driver, "count")
        check(text(driver, "views") == "2", f"counting again shows 2 (shown: {text(driver, 'views')})")

        click(driver, "logout")
        check(text(driver, "views") == "0", f"log out resets the count (shown: {text(driver, 'views')})")
        check(text(driver, "state") == "none yet", f"no session after log out (shown: {text(driver, 'state')})")
        check(driver.get_cookie("connect.sid") is None, "log out made the browser drop the cookie")
        check(text(driver, "error") == "", f"no error shown: {text(driver, 'error')!r}")
        if args.final_screenshot:
            driver.save_screenshot(args.final_screenshot)
            print(f"     screenshot: {args.final_screenshot}")

        # The CSP lets the inline script and style run (the clicks worked) and blocks nothing the page needs.
        problems = [entry["message"] for entry in driver.get_log("browser")
                    if entry["level"] in ("SEVERE", "WARNING") and "favicon" not in entry["message"]]
        check(not problems, f"no console errors or CSP violations: {problems}")
    except TimeoutException as error:
        failures.append(f"timed out waiting for the page: {error}")
        print(f"FAIL timed out waiting for the page; error shown: {driver.find_element(By.ID, 'error').text!r}")
        driver.save_screenshot(args.screenshot)
    finally:
        driver.quit()

    print(f"{'PASS' if not failures else 'FAIL'}: {len(failures)} failure(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
