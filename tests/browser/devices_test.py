#!/usr/bin/env python3
"""Two devices of one user on GET /demo, through the load balancer, in two headless Chromium profiles
(scripts/browser-test.sh starts everything).

Checks, with the page's real Content-Security-Policy:
  - each browser signs in as the same user through the "Your devices" card; both then list two devices, each
    marking itself as "this device", by handle (the session ids appear nowhere in either page);
  - the first browser clicks "log out the others": it lists one device and stays signed in;
  - the second browser's next request is a guest's (not signed in, no devices), whichever instance answers;
  - no console errors or CSP violations in either browser.
Exit status 0 when every check holds.
"""

import argparse
import secrets
import sys

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By

from demo_test import check, click, failures, idle, make_driver, session_id, text


def devices(driver):
    return [(item.get_attribute("data-current"), item.text.strip())
            for item in driver.find_elements(By.CSS_SELECTOR, "#devices li")]


def sign_in(driver, url, user):
    driver.get(url)
    idle(driver)
    field = driver.find_element(By.ID, "user")
    field.clear()
    field.send_keys(user)
    click(driver, "signin")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the demo page through the balancer")
    parser.add_argument("--screenshot", help="PNG path prefix for both browsers after signing in")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args()

    user = "alice-" + secrets.token_hex(3)
    # Two drivers: two fresh profiles, two cookie jars, as two devices.
    phone = make_driver(args.chromium, args.chromedriver)
    laptop = make_driver(args.chromium, args.chromedriver)
    try:
        sign_in(phone, args.url, user)
        check(text(phone, "who").startswith(f"signed in as {user}"), f"phone signed in: {text(phone, 'who')!r}")
        sign_in(laptop, args.url, user)
        check("2 devices" in text(laptop, "who"), f"laptop sees two devices: {text(laptop, 'who')!r}")
        phone.refresh()
        idle(phone)
        for name, driver in (("phone", phone), ("laptop", laptop)):
            listed = devices(driver)
            check(len(listed) == 2 and [c for c, _ in listed].count("1") == 1,
                  f"{name} lists 2 devices, one of them itself: {listed}")
            others = [session_id(d) for d in (phone, laptop)]
            check(all(s and s not in driver.page_source for s in others),
                  f"{name}: no session id in the page")
        if args.screenshot:
            phone.save_screenshot(args.screenshot + "-phone.png")
            laptop.save_screenshot(args.screenshot + "-laptop.png")

        click(phone, "signout-others")
        check(len(devices(phone)) == 1, f"after 'log out the others' the phone lists one device: {devices(phone)}")
        check(text(phone, "who").startswith(f"signed in as {user}"), "the phone is still signed in")

        # The laptop's next request (any instance) is a guest's.
        for _ in range(3):
            click(laptop, "count")
            check(text(laptop, "who") == "not signed in", f"laptop is a guest: {text(laptop, 'who')!r}")
        check(len(devices(laptop)) == 0, "the laptop lists no devices")

        for name, driver in (("phone", phone), ("laptop", laptop)):
            check(text(driver, "error") == "", f"{name}: no error shown: {text(driver, 'error')!r}")
            problems = [entry["message"] for entry in driver.get_log("browser")
                        if entry["level"] in ("SEVERE", "WARNING") and "favicon" not in entry["message"]]
            check(not problems, f"{name}: no console errors or CSP violations: {problems}")
    except TimeoutException as error:
        failures.append(f"timed out waiting for the page: {error}")
        print("FAIL timed out waiting for the page")
    finally:
        phone.quit()
        laptop.quit()

    print(f"{'PASS' if not failures else 'FAIL'}: {len(failures)} failure(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
