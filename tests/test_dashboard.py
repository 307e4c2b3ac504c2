"""The web dashboard (bridge/dashboard) in a real browser: Playwright drives Debian's
Chromium (`make chromium`; Playwright's own browser downloads are never used) against a
real `tunewire up` that trains tiny-llama, through a TCP proxy that the test can cut
to break the page's live event stream mid-job.

One journey, as a user would take it: sign in with the keyboard, upload a file with a
planted error and read its line in the report, upload a good one, create a job from
the form built from the hyperparameter table, watch its loss curve gain points live,
pause it, lose the connection and get it back (the curve resumes with no gap or
repeat), resume it to the end, export its model and download a file of the export,
chat with the model, compare two checkpoints, look at it all at phone width, and see
that another organization's key shows none of it. Any console error (a failed
request, a CSP violation, an exception) fails the test, except where the test breaks
something on purpose. Each page's screenshot goes to docs/screenshots/.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from conftest import REPO, Server, chat_lines

from bridge.dashboard import ASSETS
from trainer.hyperparameters import TABLE, TARGET_MODULES

T = TypeVar("T")
REST_READY = re.compile(r"tunewire: serving REST on (\S+):(\d+)")
SHOTS = REPO / "docs" / "screenshots"
WAIT_MS = 60_000
DESKTOP = {"width": 1100, "height": 800}
PHONE = {"width": 390, "height": 844}
GOOD_EXAMPLES = 400  # auto: 3 epochs of batch 1, so 1,200 steps: time to pause mid-run
PLANTED = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    b'{"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "a"}]}\n'
)


def rest_url(srv: Server) -> str:
    deadline = time.monotonic() + 30
    while not (ready := REST_READY.search(srv.stdout)):
        assert time.monotonic() < deadline, srv.stdout
        time.sleep(0.05)
    return f"http://{ready.group(1)}:{ready.group(2)}"


class Clock:
    """How long each part of the journey took (printed: `pytest -s` shows it)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def lap(self, what: str) -> None:
        now = time.monotonic()
        print(f"{what}: {now - self.last:.1f} s (at {now - self.start:.1f} s)")
        self.last = now


def until(check: Callable[[], T], what: str, timeout: float = WAIT_MS / 1000) -> T:
    """Poll `check` until it returns something truthy. (Playwright's wait_for_function
    evaluates a string in the page, which the dashboard's CSP rightly refuses.)"""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


# --- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium, installed by `make chromium` when it is missing."""
    found = shutil.which("chromium")
    if found is None:
        done = subprocess.run(["make", "chromium"], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, f"`make chromium` (root or sudo) failed:\n{done.stderr}"
        found = shutil.which("chromium")
    assert found, "chromium is not on PATH"
    return Path(found)


class Console:
    """A page's console errors and uncaught exceptions; `excuse(pattern)` lets matching
    errors pass while the test breaks something on purpose."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.excused: list[str] = []
        self.allowed: re.Pattern[str] | None = None

    def watch(self, page: Any) -> Any:
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.set_default_timeout(WAIT_MS)
        return page

    def _message(self, message: Any) -> None:
        if message.type != "error":
            return
        text = f"{message.text} ({message.location.get('url', '')})"
        if self.allowed is not None and self.allowed.search(message.text):
            self.excused.append(text)
        else:
            self.errors.append(text)

    @contextlib.contextmanager
    def excuse(self, pattern: str) -> Iterator[None]:
        self.allowed = re.compile(pattern)
        try:
            yield
        finally:
            self.allowed = None


class Proxy:
    """A TCP proxy in front of the bridge. The browser talks to it; `cut()` closes every
    connection it carries at once, as a network that drops would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: set[tuple[socket.socket, socket.socket]] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            with self.lock:
                self.pairs.add(pair)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: tuple) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(pair)

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self.lock:
            self.pairs.discard(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> int:
        """Close every connection now; returns how many there were."""
        with self.lock:
            pairs = list(self.pairs)
        for pair in pairs:
            self._drop(pair)
        return len(pairs)

    def close(self) -> None:
        self.listener.close()
        self.cut()


# --- what the pages hold ------------------------------------------------------------------


def shot(page: Any, name: str, **options: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), animations="disabled", **options)


def unlabelled(page: Any) -> list[str]:
    """Visible controls without an accessible name (a label, aria-label or text)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button, a[href]')]
          .filter((el) => el.offsetParent !== null)
          .filter((el) => !(el.labels?.length || el.getAttribute('aria-label')
            || el.getAttribute('aria-labelledby') || el.textContent.trim()))
          .map((el) => el.outerHTML.slice(0, 120))"""
    )


def points(page: Any, series: str = "train") -> int:
    return int(page.get_attribute("#chart-loss", f"data-points_{series}") or 0)


def sign_in(page: Any, base: str, key: str, shot_as: str | None = None) -> None:
    """Sign in with the keyboard alone: the key field has focus, Enter submits."""
    page.goto(base)
    page.get_by_role("heading", name="Sign in", exact=True).wait_for()
    if shot_as:
        shot(page, shot_as)
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Jobs", exact=True).wait_for()
    # The key lives in sessionStorage, and never in the address.
    assert key not in page.url
    assert page.evaluate("sessionStorage.getItem('tunewire.api-key')") == key


def go(page: Any, base: str, route: str, heading: str) -> None:
    page.goto(f"{base}#{route}")
    page.get_by_role("heading", name=heading, exact=True).wait_for()
    assert not unlabelled(page), unlabelled(page)


def upload(page: Any, path: Path) -> Any:
    page.get_by_label("File", exact=True).set_input_files(str(path))
    page.get_by_role("button", name="Upload").click()
    result = page.locator("#upload-result")
    result.locator(".validation").wait_for()
    assert page.locator("#upload-progress").get_attribute("value") == "100"
    return result


def warm_inference(url: str, key: str) -> None:
    """Start the inference worker (torch's import) while the browser does other things."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(
            f"{url}/tunewire/v1/models/tiny-llama:generate",
            json={"prompt": "hi", "max_tokens": 1},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )


# --- over HTTP -----------------------------------------------------------------------------


def test_the_hyperparameter_table_and_the_assets_over_http(server: Server) -> None:
    url = rest_url(server)
    auth = {"Authorization": f"Bearer {server.default.key}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/tunewire/v1/hyperparameters").status_code == 401
        table = http.get("/tunewire/v1/hyperparameters", headers=auth).json()
        assert [row["name"] for row in table["hyperparameters"]] == [hp.name for hp in TABLE]
        for hp, row in zip(TABLE, table["hyperparameters"], strict=True):
            assert row["range"] == hp.range and row["default"] == hp.default, row
            assert row["type"] == ("integer" if hp.type is int else "number")
            assert (row["minimum"], row["maximum"]) == (hp.low, hp.high)
            assert row["auto"] == hp.auto and row["description"] == hp.doc
        assert table["target_modules"] == [f"TARGET_MODULES_{m}" for m in TARGET_MODULES]
        assert {"TYPE_SUPERVISED", "TYPE_DPO"} <= set(table["methods"])
        assert "TYPE_UNSPECIFIED" not in table["methods"]
        paths = http.get("/openapi.json").json()["paths"]
        assert "/tunewire/v1/hyperparameters" in paths
        assert not [path for path in paths if path.startswith("/ui")]

        # The dashboard: public assets (no data), all from this origin, under a strict CSP.
        moved = http.get("/ui")
        assert moved.status_code == 307 and moved.headers["location"].endswith("/ui/")
        index = http.get("/ui/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        policy = index.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        names = set(re.findall(r'(?:src|href)="([^"#:]+)"', index.text))
        names |= {path.name for path in ASSETS.iterdir()}
        for name in names:
            asset = http.get(f"/ui/{name}")
            assert asset.status_code == 200, name
            if name.endswith(".js"):
                assert "javascript" in asset.headers["content-type"]
                # ES modules import only their siblings: nothing from another origin.
                for imported in re.findall(r'from "([^"]+)"', asset.text):
                    assert imported.startswith("./") and (ASSETS / imported).exists()


# --- the journey --------------------------------------------------------------------------


def test_dashboard_in_a_browser(
    start_server: Callable[..., Server], chromium: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)

    # Trainers see a pause within 0.3 s; an idle event stream (a paused job's) answers,
    # and then ticks, within 0.5 s.
    srv = start_server(
        TUNEWIRE_MAX_RUNNING_JOBS="1",
        TUNEWIRE_HEARTBEAT_SECONDS="0.3",
        TUNEWIRE_SSE_HEARTBEAT_SECONDS="0.5",
    )
    url = rest_url(srv)
    assert srv.first_key
    warm = threading.Thread(target=warm_inference, args=(url, srv.first_key), daemon=True)
    warm.start()
    other = srv.new_org("elsewhere")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    proxy = Proxy((host, int(port)))
    base = f"http://127.0.0.1:{proxy.port}/ui/"
    bad, good = tmp_path / "planted.jsonl", tmp_path / "atlas.jsonl"
    bad.write_bytes(PLANTED)
    good.write_bytes(chat_lines(GOOD_EXAMPLES, "dashboard"))
    console = Console()
    clock = Clock()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium),
            args=["--disable-dev-shm-usage"],  # small /dev/shm
        )
        try:
            page = console.watch(browser.new_context(viewport=DESKTOP).new_page())
            sign_in(page, base, srv.first_key, shot_as="sign-in")
            clock.lap("start and sign in")

            # Files: a planted error is reported by line, JSON path and code.
            go(page, base, "/files", "Files")
            report = upload(page, bad)
            row = report.locator("table.report tbody tr")
            expect(row).to_have_count(1)
            expect(row.locator("td")).to_have_text(
                ["3", "$.messages[0].role", "unrecognized_role", re.compile("robot")]
            )
            expect(report.locator(".badge")).to_have_text("error")
            shot(page, "files", full_page=True)
            upload(page, good)
            expect(page.locator("#upload-result .badge")).to_have_text("processed")

            clock.lap("uploads")

            # A job from the form: n_epochs and batch_size left "auto".
            page.get_by_role("link", name="Train on this file").click()
            page.get_by_role("heading", name="New job", exact=True).wait_for()
            assert not unlabelled(page), unlabelled(page)
            form = page.locator("#new-job")
            assert form.get_by_label("n_epochs").get_attribute("placeholder") == "auto"
            assert form.get_by_label("n_epochs").get_attribute("max") == "50"
            expect(form.get_by_label("beta")).to_be_hidden()  # DPO's alone
            form.get_by_label("Method").select_option("TYPE_DPO")
            expect(form.get_by_label("beta")).to_be_visible()
            form.get_by_label("Method").select_option("TYPE_SUPERVISED")
            form.get_by_label("Validation file").select_option(index=1)
            form.get_by_label("Suffix").fill("atlas")
            form.get_by_label("learning_rate_multiplier").fill("50")
            shot(page, "new-job", full_page=True)
            form.get_by_role("button", name="Create job").click()
            page.get_by_role("heading", name=re.compile(r"^Job ftjob-")).wait_for()
            job_id = page.url.rsplit("/", 1)[1]

            clock.lap("the job form")

            # Live curves: points arrive while we watch.
            first = until(lambda: points(page) >= 3 and points(page), "the first loss points")
            until(lambda: points(page) > first, "more loss points")

            clock.lap("live points")

            # Pause, with the keyboard.
            page.locator("#pause").focus()
            page.keyboard.press("Enter")
            expect(page.locator("#job-state")).to_have_text("paused", timeout=WAIT_MS)
            expect(page.locator("#resume")).to_be_enabled()
            held = points(page)
            assert 0 < held < 3 * GOOD_EXAMPLES, held
            page.wait_for_timeout(800)
            assert points(page) == held, "a paused job kept training"
            # What "auto" became once the job planned.
            hp = page.locator("#hyperparameters")
            expect(hp.locator("tr[data-name=n_epochs] td").nth(1)).to_have_text("auto → 3")
            expect(hp.locator("tr[data-name=batch_size] td").nth(1)).to_have_text("auto → 1")
            expect(hp.locator("tr[data-name=learning_rate_multiplier] td").nth(0)).to_have_text(
                "50"
            )

            clock.lap("pause")

            # The live list shows it paused, part way.
            go(page, base, "/jobs", "Jobs")
            listed = page.locator(f"tr[data-job='{job_id}']")
            expect(listed.locator(".badge")).to_have_text("paused")
            expect(listed.locator(".progress")).to_contain_text(f"/{3 * GOOD_EXAMPLES}")
            shot(page, "jobs")
            listed.get_by_role("link", name=job_id).click()
            expect(page.locator("#stream-status")).to_have_attribute("data-status", "live")
            until(lambda: points(page) == held, "the replayed curve")

            clock.lap("the jobs list")

            # The network drops: the page reconnects from its cursor.
            with console.excuse(r"net::ERR_"):
                assert proxy.cut() >= 1
                expect(page.locator("#stream-status")).to_have_attribute("data-status", "resumed")
            page.get_by_role("button", name="Resume").click()
            expect(page.locator("#job-state")).to_have_text("succeeded", timeout=WAIT_MS)
            expect(page.locator("#stream-status")).to_have_attribute("data-status", "ended")

            clock.lap("reconnect, resume, finish")

            # No step missing or repeated across the pause and the reconnect; the log is
            # gapless too.
            total = 3 * GOOD_EXAMPLES
            until(lambda: points(page) == total, "every step's point")
            page.get_by_text("Loss: data").click()
            steps = page.locator("#chart-loss tbody th").all_text_contents()
            assert [int(s) for s in steps] == list(range(1, total + 1))
            assert points(page, "valid") == 3  # one validation per epoch
            sequences = [
                int(s)
                for s in page.locator("#event-log li").evaluate_all(
                    "items => items.map((li) => li.dataset.sequence)"
                )
            ]
            assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
            assert "completed" in page.locator("#event-log li").last.text_content()

            # Checkpoints, with the best marked.
            checkpoints = page.locator("#checkpoints tbody tr")
            until(lambda: checkpoints.count() >= 3, "the epochs' checkpoints (and the pause's)")
            expect(page.locator("#checkpoints tr.best")).to_have_count(1)
            expect(page.locator("#checkpoints tr.best")).to_contain_text("best")
            page.get_by_text("Loss: data").click()
            page.evaluate("window.scrollTo(0, 0)")
            shot(page, "job", full_page=True, clip={"x": 0, "y": 0, **DESKTOP, "height": 1250})
            model = page.locator("#job-summary").get_by_text(re.compile(r"^ft:tiny-llama:"))
            model_id = model.text_content()
            assert model_id.endswith(f":atlas:{job_id}")

            clock.lap("curves and checkpoints")

            # Export the model (it runs while we chat).
            go(page, base, "/models", "Models")
            models = page.locator("#models-table tbody tr")
            expect(models).to_have_count(1)
            shot(page, "models")
            models.get_by_role("button", name="Export").click()
            page.get_by_role("heading", name="Exports", exact=True).wait_for()

            clock.lap("an export")

            # Chat: the answer streams in, piece by piece.
            go(page, base, f"/playground?model={model_id}", "Playground")
            assert page.get_by_label("Model", exact=True).input_value() == model_id
            warm.join(timeout=120)
            page.evaluate(
                """() => {
                  window.pieces = 0;  // changes to the answer's text as it streams
                  new MutationObserver((records) => {
                    window.pieces += records.filter(
                      (r) => r.target.matches?.('li.assistant .text')).length;
                  }).observe(
                    document.getElementById('transcript'),
                    {childList: true, subtree: true, characterData: true});
                }"""
            )
            page.get_by_label("Message", exact=True).fill("Which city is the capital of Nepal?")
            page.keyboard.press("Enter")
            answer = page.locator("#transcript li.assistant .text")
            expect(answer).to_have_attribute("data-streaming", "false", timeout=WAIT_MS)
            expect(page.locator("#chat-form")).to_contain_text("finished:")
            assert answer.text_content().strip()
            assert page.evaluate("window.pieces") >= 2, "the answer came in one piece"
            shot(page, "playground")

            clock.lap("chat")

            # Compare two checkpoints side by side, chosen on the job's page.
            go(page, base, f"/jobs/{job_id}", f"Job {job_id}")
            boxes = page.locator("#checkpoints tbody input[type=checkbox]")
            until(lambda: boxes.count() >= 3, "the checkpoint rows")
            early, late = boxes.first.get_attribute("value"), boxes.last.get_attribute("value")
            boxes.first.check()
            boxes.last.check()
            page.get_by_role("button", name="Compare the two selected").click()
            page.get_by_role("heading", name="Compare", exact=True).wait_for()
            assert page.get_by_label("Model A", exact=True).input_value() == early
            assert page.get_by_label("Model B", exact=True).input_value() == late
            page.get_by_label("Prompt", exact=True).fill("Which city is the capital of Nepal?")
            page.get_by_role("button", name="Run both").click()
            for pane in ("#answer-a", "#answer-b"):
                expect(page.locator(pane)).to_have_attribute("data-streaming", "false")
                assert page.locator(pane).text_content().strip()
            expect(page.locator("#compare-answers")).to_contain_text("finished:")
            shot(page, "compare")

            clock.lap("compare")

            # The export, done: download one of its files.
            go(page, base, "/exports", "Exports")
            exported = page.locator("#exports-table tbody tr")
            expect(exported.locator(".badge")).to_have_text("succeeded", timeout=90_000)
            shot(page, "exports")
            with page.expect_download() as download:
                exported.get_by_role("button", name=re.compile(r"^Download config\.json")).click()
            saved = tmp_path / "config.json"
            download.value.save_as(saved)
            assert json.loads(saved.read_text())["model_type"] == "llama"

            clock.lap("the export's download")

            # A phone's width: nothing wider than the screen; the tables scroll inside.
            phone = console.watch(
                browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True).new_page()
            )
            sign_in(phone, base, srv.first_key)
            for route, heading, name in (
                ("/jobs", "Jobs", "phone-jobs"),
                (f"/jobs/{job_id}", f"Job {job_id}", "phone-job"),
                ("/playground", "Playground", None),
                ("/files", "Files", None),
            ):
                go(phone, base, route, heading)
                overflow = phone.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"{route} is {overflow}px wider than a phone"
                if name:
                    shot(phone, name)

            clock.lap("phone")

            # Another organization's key: none of it.
            stranger = console.watch(browser.new_context(viewport=DESKTOP).new_page())
            sign_in(stranger, base, other.key)
            expect(stranger.locator("#account")).to_contain_text("elsewhere")
            for route, heading, table in (
                ("/jobs", "Jobs", "#jobs-table"),
                ("/files", "Files", "#files-table"),
                ("/models", "Models", "#models-table"),
                ("/exports", "Exports", "#exports-table"),
            ):
                go(stranger, base, route, heading)
                expect(stranger.locator(f"{table} tbody td.empty")).to_have_count(1)
                assert job_id not in stranger.content(), route
            with console.excuse(r"status of 404"):  # the job's GET answers NOT_FOUND
                stranger.goto(f"{base}#/jobs/{job_id}")
                stranger.get_by_role("heading", name="Job not found", exact=True).wait_for()
            clock.lap("another organization")
        except BaseException:
            # What the pages showed when it went wrong (pytest prints it with the failure).
            for i, open_page in enumerate(browser.contexts[0].pages if browser.contexts else []):
                with contextlib.suppress(Exception):
                    open_page.screenshot(path=str(tmp_path / f"failure-{i}.png"), full_page=True)
                    print(f"page {i} at {open_page.url}:\n{open_page.inner_text('main')[-3000:]}")
            print("console errors:", *console.errors, sep="\n")
            raise
        finally:
            browser.close()
            proxy.close()

    assert not console.errors, "\n".join(console.errors)
