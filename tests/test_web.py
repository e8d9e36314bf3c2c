"""The web page (api/kresize_api/static/) in a real browser: Debian's Chromium driven by Playwright, against the
whole platform (tests/conftest.py), with real photos from the corpus.

Screenshots of the main screens go to docs/screenshots/ (rewritten on every run).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import start_component
from harness.procs import wait_for
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; never `playwright install`
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "screenshots"
TOKEN_KEY = "kresize.token"  # where the page keeps the token (static/api.js)
TERMINAL = {"Succeeded", "PartiallyFailed", "Failed"}
THUMB = {"name": "thumb", "width": 320, "height": 320, "fit": "cover", "format": "webp"}
SLOW = 180_000  # ms: a job of real photos on two cores
TIMES = "\u00d7"  # the multiplication sign the page writes sizes (as in 320 by 320)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's own sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@dataclass
class Tab:
    page: Page
    api_url: str
    console_errors: list[str] = field(default_factory=list)

    def open(self, route: str = "") -> Page:
        self.page.goto(f"{self.api_url}/{route}")
        return self.page

    def unexpected_errors(self, *expected: tuple[int, str]) -> list[str]:
        """Console errors, except HTTP errors the test caused on purpose ((status, path) pairs, which Chromium
        logs like any failed request) and the page's own: a first visit asks GET /v1/me without a token to learn
        whether authentication is off, and a 401 answers it."""
        allowed = [(401, "/v1/me"), *expected]
        return [e for e in self.console_errors
                if not any(f"status of {status} (" in e and e.endswith(f" @ {path}") for status, path in allowed)]


@pytest.fixture
def tabs(browser, platform) -> Iterator[Callable[..., Tab]]:
    """Open a tab in a context of its own (no shared storage); signed in as `tenant` when given."""
    contexts = []

    def open_tab(tenant: str | None = None, **options) -> Tab:
        context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **options})
        contexts.append(context)
        if tenant:
            context.add_init_script(f"localStorage.setItem({TOKEN_KEY!r}, {json.dumps(platform.tokens[tenant])})")
        page = context.new_page()
        page.set_default_timeout(15_000)
        tab = Tab(page, platform.api_url)
        page.on("console", lambda m: m.type == "error" and tab.console_errors.append(
            f"{m.text} @ {urlsplit(m.location.get('url') or '').path}"))
        page.on("pageerror", lambda error: tab.console_errors.append(f"uncaught: {error}"))
        return tab

    yield open_tab
    for context in contexts:
        context.close()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def payload(path: Path, name: str | None = None, data: bytes | None = None) -> dict:
    return {"name": name or path.name, "mimeType": "image/jpeg", "buffer": path.read_bytes() if data is None else data}


def submit(page: Page, files: list, presets: tuple[str, ...] = ("thumb",)) -> str:
    """Choose files and presets on the New job view, submit, and return the job's name (from the URL)."""
    page.locator("#file-input").set_input_files(files)
    for box in page.locator("input[name=preset]").all():
        box.set_checked(box.get_attribute("value") in presets)
    page.get_by_role("button", name="Start resizing").click()
    page.wait_for_url(re.compile(r"#/jobs/[a-z0-9-]+$"), timeout=60_000)
    return page.url.rsplit("/", 1)[1]


def all_files(client: httpx.Client, name: str) -> list[dict]:
    items, cursor = [], None
    while True:
        page = client.get(f"/v1/jobs/{name}/files", params={"cursor": cursor} if cursor else {}).json()
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items


def finished_job(platform, tenant: str, paths: list[Path]) -> tuple[str, list[dict]]:
    """A job made through the API (not the page), waited for; its name and files."""
    with platform.client(tenant) as client:
        response = client.post("/v1/jobs", files=[("files", (p.name, p.read_bytes())) for p in paths],
                               data={"targets": json.dumps([THUMB])})
        assert response.status_code == 202, response.text
        name = response.json()["name"]
        wait_for(lambda: client.get(f"/v1/jobs/{name}").json()["phase"] in TERMINAL, 180, interval=0.5,
                 message=f"{name} to finish")
        return name, all_files(client, name)


# Controls without an accessible name: no <label>, no aria-label(ledby), and (buttons, links) no text.
UNLABELLED = """() => [...document.querySelectorAll("input, select, textarea, button, a[href], progress")]
    .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")
                      || (["BUTTON", "A"].includes(el.tagName) && el.textContent.trim())))
    .map((el) => el.outerHTML.slice(0, 80))"""


def row_of(page: Page, filename: str) -> Locator:
    return page.locator("#job-files li").filter(has=page.locator(".name", has_text=re.compile(
        f"^{re.escape(filename)}$")))


def expect_file(page: Page, filename: str, state: str, reason: str | re.Pattern | None = None) -> None:
    """The file's row says its state, and why it failed (or no reason at all). The reason is compared first: when
    a file is not in the expected state, the failure then shows why the page says it is not."""
    row = row_of(page, filename)
    if reason is None:
        expect(row.locator(".reason")).to_have_text("")
    else:
        expect(row.locator(".reason")).to_contain_text(reason)
    expect(row.locator(".badge")).to_have_text(state)


def test_sign_in_upload_watch_progress_and_gallery(tabs, platform, corpus):
    photos = [corpus / "photos" / name for name in ("DSCN0010.jpg", "DSCN0021.jpg", "nikon-e950.jpg")]
    tab = tabs()
    page = tab.open()

    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    shot(page, "signin")
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_contain_text("not accepted")
    expect(page.get_by_label("API token")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("API token").fill(platform.tokens["alice"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#account-name")).to_have_text("Signed in as alice")
    assert page.evaluate(f"localStorage.getItem({TOKEN_KEY!r})") == platform.tokens["alice"]

    # The form: the chosen files with their sizes, the thumbnail preset on by default.
    page.locator("#file-input").set_input_files(photos)
    expect(page.locator("#file-list li")).to_have_count(3)
    expect(page.locator("#file-summary")).to_contain_text("3 images chosen")
    expect(page.locator("#file-list li").first).to_contain_text("DSCN0010.jpg")
    expect(page.locator("#file-list li").first).to_contain_text("KB")
    expect(page.get_by_label("Thumbnail")).to_be_checked()
    shot(page, "upload")

    # The first live stream the page opens ends at once, as a dropped connection would: EventSource must
    # reconnect (with the token in the query, as it cannot send headers) and the page carry on.
    streams = []

    def drop_first_stream(route):
        streams.append(route.request.url)
        if len(streams) == 1:
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body="retry: 500\n: bye\n\n")
        else:
            route.continue_()

    page.route(re.compile(r"/v1/jobs/[^/]+/events"), drop_first_stream)
    name = submit(page, photos)
    expect(page.locator("#job-name")).to_have_text(name)
    expect(page.locator("#job-phase")).to_have_text("Succeeded", timeout=SLOW)
    expect(page.locator("#job-percent")).to_have_text("100%")
    expect(page.locator("#job-progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#count-succeeded")).to_have_text("3")
    expect(page.locator("#count-total")).to_have_text("3")
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()  # a finished job cannot be cancelled
    assert len(streams) >= 2 and all(urlsplit(url).query == f"access_token={platform.tokens['alice']}"
                                     for url in streams), streams
    for photo in photos:
        expect_file(page, photo.name, "succeeded")

    with platform.client("alice") as client:
        files = {f["filename"]: f for f in all_files(client, name)}
    images = page.locator("#gallery img")
    expect(images).to_have_count(3)
    for image in images.all():
        image.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                               timeout=30_000)
        natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        filename = image.get_attribute("alt").rsplit(" (", 1)[0]
        (output,) = files[filename]["outputs"]
        assert natural == [output["width"], output["height"]] == [int(image.get_attribute("width")),
                                                                     int(image.get_attribute("height"))]
        assert image.get_attribute("alt") == f"{filename} (thumb)" and image.get_attribute("loading") == "lazy"

    # A download link per output, named by target, format and size; each one serves that output.
    links = page.locator("#gallery a[download]")
    expect(links).to_have_count(sum(len(f["outputs"]) for f in files.values()))
    for link in links.all():
        text = link.inner_text()
        assert re.search(rf"thumb · WEBP · \d+{TIMES}\d+ · [\d.]+ (B|KB)", text), text
        data = httpx.get(link.get_attribute("href"), timeout=30).content
        with Image.open(io.BytesIO(data)) as result:
            assert result.format == "WEBP" and f"{result.width}{TIMES}{result.height}" in text
    shot(page, "job")

    # Signing out forgets the token; a reload asks for one again.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate(f"localStorage.getItem({TOKEN_KEY!r})") is None
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert tab.unexpected_errors() == []


def test_bad_files_are_shown_failed_with_their_reason(tabs, corpus):
    tab = tabs("alice")
    page = tab.open("#/new")
    broken = {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"not an image"}
    # Only a bad file: the API refuses the request; its error and the file's reason are announced.
    page.locator("#file-input").set_input_files([broken])
    page.get_by_role("button", name="Start resizing").click()
    error = page.locator("#messages .message.error")
    expect(error).to_contain_text("The job was not created")
    expect(error).to_contain_text("broken.jpg: not a supported image")
    expect(page.locator("#messages")).to_have_attribute("aria-live", "polite")
    assert page.url.endswith("#/new")

    # With good photos (one named like HTML, to prove names are shown as text) and a truncated JPEG, which
    # passes the upload checks and fails in the resizer.
    html_name = "<img src=x onerror=window.pwned=1>.jpg"
    good = corpus / "photos" / "fujifilm-dx10.jpg"
    name = submit(page, [payload(good), payload(corpus / "bad" / "truncated_DSCN0010.jpg"),
                         payload(corpus / "photos" / "Canon_40D.jpg", name=html_name)])
    expect(page.locator("#messages .message.warning")).to_contain_text("broken.jpg: not a supported image")
    expect(page.locator("#job-phase")).to_have_text("Partially failed", timeout=SLOW)
    expect(page.locator("#job-files li")).to_have_count(4)
    expect_file(page, "broken.jpg", "failed", "not a supported image")
    expect_file(page, "truncated_DSCN0010.jpg", "failed", re.compile("truncated", re.IGNORECASE))
    expect_file(page, good.name, "succeeded")
    expect_file(page, html_name, "succeeded")
    expect(page.locator("#count-failed")).to_have_text("2")
    captions = sorted(page.locator("#gallery figcaption").all_inner_texts())
    assert captions == sorted([good.name, html_name])
    assert page.evaluate("window.pwned") is None
    assert page.locator("img[src='x']").count() == 0
    assert name and tab.unexpected_errors((415, "/v1/jobs")) == []


def test_cancel_a_running_job(tabs, platform, corpus):
    tab = tabs("alice")
    page = tab.open("#/new")
    photos = sorted((corpus / "photos").glob("*.jpg")) + sorted((corpus / "orientation").glob("*.jpg"))
    name = submit(page, photos, presets=("avif", "webp", "web"))  # AVIF at 1600 px: the slowest there is
    cancel = page.get_by_role("button", name="Cancel job")
    expect(cancel).to_be_visible()
    # While it runs: the phase, files being resized and files waiting, each said in words.
    expect(page.locator("#job-phase")).to_have_text("Running", timeout=60_000)
    expect(page.locator("#job-files .badge", has_text="active").first).to_be_visible(timeout=30_000)
    expect(page.locator("#job-files .badge", has_text="waiting").first).to_be_visible()
    shot(page, "job-running")

    # Asked first: saying no keeps the job.
    page.once("dialog", lambda dialog: dialog.dismiss())
    cancel.click()
    expect(page.locator("#job-name")).to_have_text(name)
    with platform.client("alice") as client:
        assert client.get(f"/v1/jobs/{name}").status_code == 200

        asked = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
        cancel.click()
        page.wait_for_url(re.compile(r"#/jobs$"))
        assert name in asked[0]
        expect(page.locator("#messages")).to_contain_text(f"Job {name} is being cancelled")
        wait_for(lambda: client.get(f"/v1/jobs/{name}").status_code == 404, 60, message=f"{name} to be deleted")
    # The list drops it at its next refresh (every 5 s).
    expect(page.locator(f"#jobs-body tr[data-key='{name}']")).to_have_count(0, timeout=20_000)
    assert tab.unexpected_errors() == []


def test_jobs_list_shows_own_jobs_only_and_opens_them(tabs, platform, corpus):
    photo = corpus / "photos" / "Canon_40D.jpg"
    bobs, _ = finished_job(platform, "bob", [photo])
    alices, _ = finished_job(platform, "alice", [photo])
    tab = tabs("alice")
    page = tab.open("#/jobs")
    expect(page.get_by_role("heading", name="Your jobs")).to_be_visible()
    row = page.locator(f"#jobs-body tr[data-key='{alices}']")
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text("Succeeded")
    expect(row.locator("td.num")).to_have_text("1 / 1")
    expect(row.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
    names = page.locator("#jobs-body td:first-child a").all_inner_texts()
    assert bobs not in names
    with platform.client("bob") as bob:
        assert not set(names) & {j["name"] for j in bob.get("/v1/jobs").json()["items"]}

    # A job made meanwhile shows up by itself (auto-refresh), newest first.
    newer, _ = finished_job(platform, "alice", [photo])
    expect(page.locator("#jobs-body tr").first).to_have_attribute("data-key", newer, timeout=20_000)
    shot(page, "jobs")

    # Keyboard: the job's link takes the focus and Enter opens the job.
    row.get_by_role("link", name=alices).focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(f"#/jobs/{alices}$"))
    expect(page.locator("#job-name")).to_have_text(alices)
    # A reload keeps the view (the route is in the URL).
    page.reload()
    expect(page.locator("#job-name")).to_have_text(alices)
    expect(page.locator("#job-phase")).to_have_text("Succeeded")
    # Back to the list, and a click anywhere on a row opens it too.
    page.get_by_role("link", name="Jobs").click()
    page.locator(f"#jobs-body tr[data-key='{newer}'] td.num").click()
    page.wait_for_url(re.compile(f"#/jobs/{newer}$"))
    assert tab.unexpected_errors() == []


def test_phone_keyboard_and_no_horizontal_overflow(tabs, platform, corpus):
    job, _ = finished_job(platform, "alice", [corpus / "photos" / "DSCN0010.jpg", corpus / "photos" / "jolla.jpg"])
    tab = tabs("alice", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
               device_scale_factor=2)
    page = tab.open("#/new")
    # Listen from the start: Playwright turns the interception of file pickers on without waiting for it, so a
    # listener added just before a key press can miss the picker that key opens.
    page.on("filechooser", lambda _: None)
    expect(page.get_by_role("heading", name="New resize job")).to_be_visible()

    # Tab from the top of the page reaches the drop zone, every preset, and the submit button, in that order.
    order = []
    for _ in range(40):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
        if order[-1] == "submit":
            break
    presets = ["preset-thumb", "preset-web", "preset-webp", "preset-avif"]
    assert [i for i in order if i in ("dropzone", *presets, "submit")] == ["dropzone", *presets, "submit"], order
    # Visible focus: the focused control has an outline.
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), outline

    # Enter (and Space) on the drop zone opens the file picker, for many files.
    page.locator("#dropzone").focus()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    assert chooser.value.is_multiple()
    long_name = "holiday-" + "very-long-name-without-spaces-" * 5 + ".jpg"
    chooser.value.set_files([payload(corpus / "photos" / "DSCN0021.jpg", name=long_name),
                             payload(corpus / "photos" / "nikon-e950.jpg")])
    expect(page.locator("#file-list li")).to_have_count(2)
    with page.expect_file_chooser():
        page.keyboard.press(" ")
    # Remove a file by keyboard: the focus stays in the list.
    page.get_by_role("button", name="Remove nikon-e950.jpg").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#file-list li")).to_have_count(1)
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == f"Remove {long_name}"

    page.get_by_label("Custom target").check()
    expect(page.get_by_label("Name", exact=True)).to_be_focused()
    page.get_by_label("Name", exact=True).fill("Bad Name")
    page.get_by_role("button", name="Start resizing").click()
    expect(page.locator("#messages .message.error")).to_contain_text("custom target's name")
    expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")

    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate(UNLABELLED) == []
    shot(page, "phone")
    for route in ("#/jobs", f"#/jobs/{job}"):
        page.goto(f"{platform.api_url}/{route}")
        page.wait_for_load_state("networkidle")
        if route != "#/jobs":
            expect(page.locator("#gallery img")).to_have_count(2)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, route
        assert page.evaluate(UNLABELLED) == [], route
    shot(page, "phone-job")

    # Motion only for those who have not asked for less: the spinning symbol of running badges stops.
    spin = "getComputedStyle(document.querySelector('#job-phase'), '::before').animationName"
    page.evaluate("document.querySelector('#job-phase').className = 'badge running'")
    assert page.evaluate(spin) == "spin"
    page.emulate_media(reduced_motion="reduce")
    assert page.evaluate(spin) == "none"
    assert tab.unexpected_errors() == []


def test_works_offline_with_only_the_api_and_s3(tabs, platform, corpus):
    job, files = finished_job(platform, "alice", [corpus / "photos" / "DSCN0021.jpg"])
    origin = lambda url: "{0.scheme}://{0.netloc}".format(urlsplit(url))  # noqa: E731
    allowed = {origin(platform.api_url), origin(files[0]["outputs"][0]["url"])}
    blocked, served = [], []

    def only_ours(route):
        if origin(route.request.url) in allowed:
            served.append(route.request.url)
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    tab = tabs()
    tab.page.context.route("**/*", only_ours)
    page = tab.open()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # Our stylesheet and icon, from the API: system fonts, the layout applied.
    assert "system-ui" in page.evaluate("getComputedStyle(document.body).fontFamily")
    assert page.evaluate("document.querySelector('.brand img').naturalWidth") > 0
    page.get_by_label("API token").fill(platform.tokens["alice"])
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{platform.api_url}/#/jobs/{job}")
    expect(page.locator("#job-phase")).to_have_text("Succeeded")
    image = page.locator("#gallery img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    page.goto(f"{platform.api_url}/#/jobs")
    expect(page.locator(f"#jobs-body tr[data-key='{job}']")).to_be_visible()
    page.get_by_role("link", name="API reference").click()  # the API's docs, offline too
    page.wait_for_load_state("networkidle")
    expect(page.locator(".swagger-ui").first).to_be_visible()
    assert blocked == []
    assert any(u.endswith("/static/app.js") for u in served) and any("/static/" in u for u in served)
    assert tab.unexpected_errors() == []


def test_no_sign_in_form_when_authentication_is_off(tabs, s3_server, kube, tmp_path):
    api = start_component("api", s3_server, kube[1], tmp_path / "api.log", api={"auth": {"enabled": False}})
    try:
        tab = tabs()
        tab.api_url = api.url
        page = tab.open()
        expect(page.get_by_role("heading", name="New resize job")).to_be_visible()
        expect(page.locator("#account-name")).to_have_text("Authentication is off")
        expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
        page.get_by_role("link", name="Jobs").click()
        expect(page.get_by_role("heading", name="Your jobs")).to_be_visible()
        assert tab.console_errors == []  # not even the 401 of a first visit: /v1/me answers 200
    finally:
        api.stop()
