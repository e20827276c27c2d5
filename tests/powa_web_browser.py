"""powa-web in a real browser (headless Chromium driven by selenium), as a
user checks that a collector runs: log in, open the configuration page,
the server list and a server's page, run the collector actions, and read
what the pages say.

usage: powa_web_browser.py URL SERVER_NAME SRVID COLLECTOR_TEXT WEB_MAJOR

Prints one "checked: ..." line per check; exits 1 with the reason (and the
page's text) on the first one that fails.
"""

import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

# What powa-web says when it finds no collector session on the repository.
NO_COLLECTOR = ("No collector is running", "No PoWA collector daemon is running")
PATIENCE = 30


class Failed(Exception):
    pass


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--user-data-dir=" + profile,
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(
        service=Service(executable_path="/usr/bin/chromedriver"), options=options
    )


def page_text(driver):
    return driver.find_element(By.TAG_NAME, "body").text


def wait_for(driver, what, check):
    """Poll check(driver) until it returns something true."""
    deadline = time.time() + PATIENCE
    while True:
        try:
            found = check(driver)
        except Exception:
            found = None
        if found:
            return found
        if time.time() > deadline:
            raise Failed("%s: not seen within %ds on %s; the page says:\n%s"
                         % (what, PATIENCE, driver.current_url, page_text(driver)))
        time.sleep(0.5)


def wait_text(driver, what, text):
    wait_for(driver, what, lambda d: text in page_text(d))


def no_collector_alarm(driver):
    text = page_text(driver)
    for alarm in NO_COLLECTOR:
        if alarm in text:
            raise Failed("%s says %r:\n%s" % (driver.current_url, alarm, text))


def log_in(driver, url, server):
    driver.get(url + "/login/")
    wait_for(driver, "the login form", lambda d: d.find_elements(
        By.CSS_SELECTOR, "input[name=password]"))
    # The field names changed between releases (username, user): send both
    # in a plain form post, as the login form does.
    driver.execute_script(
        """
        const form = document.createElement('form');
        form.method = 'POST';
        form.action = arguments[0] + '/login/';
        const fields = {username: 'postgres', user: 'postgres',
                        password: 'unused', server: arguments[1]};
        for (const [name, value] of Object.entries(fields)) {
            const input = document.createElement('input');
            input.name = name;
            input.value = value;
            form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
        """,
        url, server)
    wait_for(driver, "the logged-in page", lambda d: "/login" not in d.current_url)


def collector_checked(driver, collector):
    """The Collector Detail entry naming the collector, with its check mark
    (4.1: an <i class="fi-check ok">; 5.0: a "✓")."""
    label = "Remote collector (%s)" % collector
    for entry in driver.find_elements(
            By.XPATH, "//*[b[contains(., '%s')]]" % label):
        html = entry.get_attribute("innerHTML")
        if "fi-check" in html or "\u2713" in entry.text:
            return entry.text.replace("\u2713", "") + " \u2713"
    return None


def click_text(driver, text):
    """Click the innermost visible element whose text holds `text`."""
    has = "contains(normalize-space(.), '%s')" % text
    def find(d):
        for el in d.find_elements(By.XPATH, "//*[%s and not(*[%s])]" % (has, has)):
            if el.is_displayed():
                return el
        return None
    wait_for(driver, "a control named %r" % text, find).click()


# The collector refuses a forced snapshot right after another one; a user
# waits and asks again.
TOO_SOON = "less than 10 seconds old"


def action(driver, major, name, success):
    """Run a collector action from the page's menu and wait for its
    success message."""
    for attempt in (1, 2):
        if major >= 5:
            click_text(driver, "Actions")
        click_text(driver, name)
        answer = wait_for(driver, "the answer to %s" % name, lambda d: (
            success in page_text(d) and "success")
            or (TOO_SOON in page_text(d) and "too soon"))
        if answer == "success":
            print("checked: %s reports %r" % (name, success))
            return
        if attempt == 1:
            time.sleep(11)
            driver.refresh()
    raise Failed("%s: the collector kept answering %r" % (name, TOO_SOON))


def main():
    url, server, srvid, collector, major = sys.argv[1:6]
    major = int(major)
    with tempfile.TemporaryDirectory(prefix="powa-web-browser-") as profile:
        driver = browser(profile)
        try:
            log_in(driver, url, server)

            driver.get(url + "/config/")
            found = wait_for(driver, "Collector Detail naming %s with a check mark"
                             % collector, lambda d: collector_checked(d, collector))
            print("checked: /config/ Collector Detail: %s" % " ".join(found.split()))
            # The server list: the registered server, its worker running.
            row = wait_for(driver, "the server list's running worker", lambda d: [
                r.text for r in d.find_elements(By.XPATH, "//tr")
                if "running" in r.text and "127.0.0.1" in r.text])
            print("checked: /config/ server list: %s" % " ".join(row[0].split()))
            no_collector_alarm(driver)

            running = "Collector status for this instance: running"
            if major >= 5:
                # powa-web 5.0's server page keeps this datasource but no
                # widget shows it: read it in the logged-in browser.
                details = "/config/%s/server_details/?from=%s&to=%s" % (
                    srvid, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600)),
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                driver.get(url + details)
                wait_text(driver, "the server's worker status", running)
                print("checked: %s says %r" % (details.split("?")[0], running))
            driver.get("%s/config/%s/" % (url, srvid))
            if major < 5:
                wait_text(driver, "the server's worker status", running)
                print("checked: /config/%s/ says %r" % (srvid, running))
            no_collector_alarm(driver)

            action(driver, major, "Reload collector", "Collector successfully reloaded!")
            if major >= 5:
                action(driver, major, "Force a snapshot",
                       "Forced snapshot requested. Status:")
                action(driver, major, "Refresh catalogs",
                       "Catalog refresh successfully registered:")
            no_collector_alarm(driver)

            driver.get("%s/server/%s/overview/" % (url, srvid))
            wait_for(driver, "the server's overview", lambda d: len(page_text(d)) > 0)
            time.sleep(2)
            no_collector_alarm(driver)
            print("checked: no page (/config/, /config/%s/, /server/%s/overview/) "
                  "says no collector runs" % (srvid, srvid))
        except Failed as e:
            print("FAILED: %s" % e, file=sys.stderr)
            sys.exit(1)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
