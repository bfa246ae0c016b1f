"""The web client in a real browser: Debian's Chromium, headless, driven by Selenium (chromedriver).

A browser user and a terminal user (``client.py``) chat through a real ``broker.py --web``; the page is
checked as a person would see it (the DOM, screenshots at desktop and phone widths) and against
hostile text. Few tests, each doing much, since every browser start costs a second or two of CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from conftest import REPO, Broker, Processes, online, private, said

pytestmark = pytest.mark.timeout(90)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0  # seconds for the page to show something
# What this closed network needs: no sandbox (root in CI), nothing that calls out to the internet.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)
# Where the screenshots go: a temporary folder, or docs/ to refresh those of the README
# (CHAT_SCREENSHOTS=docs python -m pytest tests/test_web_browser.py).
SCREENSHOTS = os.environ.get("CHAT_SCREENSHOTS", "")
WEB_URL = re.compile(r"^web: the web client is at (?P<url>http://127\.0\.0\.1:(?P<port>\d+)/)$")


@pytest.fixture
def chrome() -> Iterator[WebDriver]:
    for tool in (CHROMIUM, CHROMEDRIVER):
        assert os.path.exists(tool), f"{tool} is missing: apt-get install -y chromium chromium-driver (.ci/run does)"
    profile = tempfile.mkdtemp(prefix="chat-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1200,800")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # chromedriver ends Chromium on quit
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def web_broker(procs: Processes, *extra: str, port: int = 0, pub_port: int = 0, label: str = "broker") -> tuple[Broker, str]:
    """``broker.py`` with ``extra`` (give --web), and the URL of its web client."""
    broker = Broker(timeout=5.0, extra=extra, port=port, pub_port=pub_port, label=label)
    procs.listening(broker)
    return broker, broker.expect(WEB_URL)["url"]


def wait(driver: WebDriver, what: Callable[[WebDriver], Any], describe: str) -> Any:
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(what)
    except TimeoutException:
        pytest.fail(f"the page never showed {describe}; its log:\n" + "\n".join(log_lines(driver)))


def log_lines(driver: WebDriver) -> list[str]:
    """The lines of the conversation on screen, as text."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#log .conv-log:not([hidden]) .line')].map(e => e.textContent)"
    )


def shows(driver: WebDriver, text: str, count: int = 1) -> None:
    wait(driver, lambda d: sum(text in line for line in log_lines(d)) >= count, repr(text))


def log_in(driver: WebDriver, url: str, name: str) -> None:
    driver.get(url)
    field = driver.find_element(By.ID, "name")
    field.clear()
    field.send_keys(name + "\n")
    wait(driver, lambda d: d.find_element(By.ID, "state").text == "connected", "connected")


def type_line(driver: WebDriver, text: str) -> None:
    driver.find_element(By.ID, "message").send_keys(text + "\n")


def open_conversation(driver: WebDriver, title: str) -> None:
    # Found and clicked in one script: the page redraws its list as lines come (no stale elements).
    clicked = driver.execute_script("""
        const button = [...document.querySelectorAll('#conv-list button')]
            .find(b => b.firstChild.textContent === arguments[0]);
        if (button) button.click();
        return !!button;
    """, title)
    assert clicked, f"no conversation {title} in {conversations(driver)}"
    wait(driver, lambda d: d.find_element(By.ID, "title").text == title, f"the conversation {title}")


def conversations(driver: WebDriver) -> list[str]:
    """The entries of the conversation list, with their unread counts: "#general 1"."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#conv-list button')].map(b => b.innerText.replace(/\\n/g, ' '))"
    )


HOSTILE = [
    "<img src=x onerror=window.pwned=1>",
    "<script>window.pwned=2</script>",
    "javascript:window.pwned=3",
    'http://link.test/a"><b onclick=window.pwned=4>b',
    "\x1b[31mred\x1b[0m",
]


def test_browser_and_terminal_users_chat_in_rooms_and_in_private_and_hostile_text_stays_text(
    procs: Processes, chrome: WebDriver, tmp_path: Path
) -> None:
    shots = REPO / "docs" if SCREENSHOTS == "docs" else tmp_path
    broker, url = web_broker(procs, "--web", "0", "--rate", "0")
    carol = procs.join("carol", broker)
    for n in range(1, 26):
        carol.send(f"old {n}")
    carol.send("/who")  # answered once the broker has handled every line before it
    carol.expect(online("carol"))

    # The name prompt shows the broker's refusal; then the page joins with history, and older on scroll.
    chrome.get(url)
    chrome.find_element(By.ID, "name").send_keys("Carol\n")
    wait(chrome, lambda d: "taken" in d.find_element(By.ID, "login-error").text, "the name refused as taken")
    log_in(chrome, url, "alice")
    alice = chrome.current_window_handle
    accessible = chrome.execute_script("""
        const label = (id) => document.querySelector(`label[for=${id}]`)?.textContent;
        return [document.getElementById('log').getAttribute('role'), label('name'), label('message')];
    """)
    assert accessible == ["log", "Name", "Message"]
    shows(chrome, "<carol>old 25")
    assert [line for line in log_lines(chrome) if "old " in line][0].endswith("old 6")  # 20 lines of history
    olds = lambda d: [int(line.rsplit(" ", 1)[1]) for line in log_lines(d) if "<carol>old " in line]  # noqa: E731
    chrome.find_element(By.CSS_SELECTOR, "#log .conv-log:not([hidden]) button.older").click()  # or scroll up
    wait(chrome, lambda d: olds(d)[0] == 1, "the older lines")
    assert olds(chrome) == list(range(1, 26))
    chrome.switch_to.new_window("tab")
    log_in(chrome, url, "bob")
    bob = chrome.current_window_handle

    type_line(chrome, "hi from bob's browser")
    carol.expect(said("bob", "hi from bob's browser"))
    carol.send("hi from the terminal")
    shows(chrome, "<carol>hi from the terminal")
    chrome.switch_to.window(alice)
    shows(chrome, "<bob>hi from bob's browser")
    shows(chrome, "<carol>hi from the terminal")
    type_line(chrome, "hello from alice")
    carol.expect(said("alice", "hello from alice"))
    chrome.find_element(By.ID, "message").send_keys(Keys.ARROW_UP)  # Up recalls the last line
    assert chrome.find_element(By.ID, "message").get_attribute("value") == "hello from alice"
    chrome.find_element(By.ID, "message").clear()

    # Rooms: alice joins #dev from the page, carol from the terminal; #general counts what alice misses.
    type_line(chrome, "/join #dev")
    wait(chrome, lambda d: d.find_element(By.ID, "title").text == "#dev", "#dev")
    carol.send("/join #dev")
    wait(chrome, lambda d: "carol" in d.find_element(By.ID, "member-list").text, "carol among #dev's members")
    carol.send("dev talk")
    shows(chrome, "<carol>dev talk")
    chrome.switch_to.window(bob)
    type_line(chrome, "general only")
    chrome.switch_to.window(alice)
    wait(chrome, lambda d: "#general 1" in conversations(d), "one unread line in #general")
    type_line(chrome, "alice in dev")
    carol.expect(rf"#dev alice: alice in dev$")

    # Private: its own conversation, both ways.
    carol.send("/pm alice a secret")
    wait(chrome, lambda d: any(c.startswith("carol") for c in conversations(d)), "a conversation with carol")
    open_conversation(chrome, "carol")
    shows(chrome, "<carol>a secret")
    type_line(chrome, "secret reply")
    carol.expect(private("alice", "secret reply"))

    # Hostile text from the terminal shows literally in #general, and nothing of it runs.
    open_conversation(chrome, "#general")
    carol.send("/switch #general")
    for text in HOSTILE:
        carol.send(text)
    carol.send("hey alice, look")
    shows(chrome, "hey alice, look")
    lines = log_lines(chrome)
    for text in HOSTILE[:4]:
        assert any(text in line for line in lines), f"{text!r} not shown literally in {lines}"
    assert any("^[[31mred^[[0m" in line for line in lines)  # escapes arrive neutralised, shown as text
    found = chrome.execute_script("""
        const log = document.getElementById('log');
        return {pwned: window.pwned === undefined ? null : window.pwned,
                elements: log.querySelectorAll('img, script, b, iframe').length,
                links: [...log.querySelectorAll('a')].map(a => [a.getAttribute('href'), a.rel, a.textContent]),
                mention: [...log.querySelectorAll('.line.mention')].map(e => e.textContent)};
    """)
    assert found["pwned"] is None and found["elements"] == 0
    assert found["links"] == [["http://link.test/a", "noopener noreferrer", "http://link.test/a"]]  # the quote ends it
    assert [m for m in found["mention"] if "hey alice, look" in m], found["mention"]

    chrome.save_screenshot(str(shots / "web-desktop.png"))
    chrome.set_window_size(360, 740)  # a phone: one column, the lists behind buttons
    wait(chrome, lambda d: not d.find_element(By.ID, "conversations").is_displayed(), "one column")
    assert chrome.find_element(By.ID, "toggle-nav").is_displayed()
    assert chrome.execute_script("return document.getElementById('log').getBoundingClientRect().width") > 300
    assert chrome.execute_script("return document.documentElement.scrollWidth") <= 360
    chrome.save_screenshot(str(shots / "web-phone.png"))
    chrome.find_element(By.ID, "toggle-nav").click()
    open_conversation(chrome, "#dev")
    assert not chrome.find_element(By.ID, "conversations").is_displayed()  # picking one closes the list


def test_the_page_comes_back_after_a_broker_sigkill_and_restart_with_no_gap(
    procs: Processes, chrome: WebDriver, tmp_path: Path
) -> None:
    db = str(tmp_path / "history.db")
    broker, url = web_broker(procs, "--db", db, "--web", "0")
    port = WEB_URL.match(url.join(["web: the web client is at ", ""]))["port"]  # chosen by the OS; kept on restart
    carol = procs.join("carol", broker)
    log_in(chrome, url, "alice")
    carol.send("before")
    shows(chrome, "<carol>before")

    broker.signal(signal.SIGKILL)
    broker.wait()
    wait(chrome, lambda d: d.find_element(By.ID, "state").text == "lost", "the connection lost")
    type_line(chrome, "typed while away")
    restarted, url_again = web_broker(
        procs, "--db", db, "--web", port, port=broker.port, pub_port=broker.pub_port, label="broker (restarted)"
    )
    assert url_again == url
    carol.expect_err(r"back in: reconnected", 15)
    carol.send("during the gap")
    wait(chrome, lambda d: d.find_element(By.ID, "state").text == "connected", "connected again")
    carol.send("after")
    shows(chrome, "<carol>after")
    carol.expect(said("alice", "typed while away"))
    lines = log_lines(chrome)
    for text in ("<carol>before", "<carol>during the gap", "<carol>after", "<alice>typed while away"):
        assert sum(text in line for line in lines) == 1, f"{text!r} not exactly once in {lines}"
    assert len(carol.matching(said("alice", "typed while away"))) == 1


SPY_ON_NOTIFICATIONS = """
    window.notified = [];
    window.Notification = function (title, options) { window.notified.push([title, options.body]); };
    window.Notification.permission = "granted";
    Object.defineProperty(document, "hidden", { configurable: true, get: () => arguments[0] });
"""


def test_a_mention_is_marked_the_core_s_way_notified_when_hidden_and_ignore_hides_a_user(
    procs: Processes, chrome: WebDriver
) -> None:
    broker, url = web_broker(procs, "--web", "0", "--rate", "0")
    bob = procs.join("bob", broker, "--no-log")
    log_in(chrome, url, "a.b")  # a name with regex characters
    type_line(chrome, "/join #dev")
    wait(chrome, lambda d: d.find_element(By.ID, "title").text == "#dev", "#dev")
    chrome.execute_script(SPY_ON_NOTIFICATIONS, True)  # the tab is hidden from now on
    for text in ("axb is no mention", "nor is xa.bx", "hey A.B, look", "so a.b."):
        bob.send(text)
    wait(chrome, lambda d: "#general 4,2!" in conversations(d), "4 unread in #general, 2 of them mentions")

    notified = chrome.execute_script("return window.notified")
    assert notified == [["bob in #general", "hey A.B, look"], ["bob in #general", "so a.b."]]
    open_conversation(chrome, "#general")
    marked = chrome.execute_script("return [...document.querySelectorAll('.line.mention')].map(e => e.textContent)")
    assert [m[m.index("<"):] for m in marked] == ["<bob>hey A.B, look", "<bob>so a.b."]

    type_line(chrome, "/ignore bob")
    shows(chrome, "ignoring bob")
    bob.send("a.b, you cannot see this")
    bob.send("/pm a.b nor this")
    carol = procs.join("carol", broker, "--no-log")
    carol.send("carol still shows")
    shows(chrome, "<carol>carol still shows")
    assert [line for line in log_lines(chrome) if "see this" in line] == []
    assert not any(c.startswith("bob") for c in conversations(chrome))  # no private conversation begun
    assert chrome.execute_script("return window.notified.length") == 2
