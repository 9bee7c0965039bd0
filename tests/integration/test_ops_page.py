"""GET /: the ops page as a browser renders it, after its script ran against the live JSON endpoints.

Headless Chromium loads the page (``--dump-dom`` with a virtual-time budget long enough for a few 2 s refreshes)
and the dumped DOM is parsed with the standard library. Chromium comes from Debian's ``chromium`` package: when it
is missing, the module installs it if it runs as root with apt-get, and skips otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from system.openapi import ops_page
from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Orchestrator, running, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
RENDER_TIMEOUT_S = 60
# Virtual time the page gets before its DOM is dumped: the first refresh plus two more (every 2 s).
VIRTUAL_TIME_MS = 6000


# -- Chromium -----------------------------------------------------------------------------------------------------

def _apt_install() -> str:
    """Install Debian's chromium (apt-get update only if the first try fails); return apt's output."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    output = ""
    for step in ([install], [["apt-get", "update", "-q"], install]):
        for command in step:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                                  stdin=subprocess.DEVNULL)
            output += done.stdout + done.stderr
        if os.access(CHROMIUM, os.X_OK):
            break
    return output


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary; installed with apt-get when missing and running as root, else the module skips."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get): "
                    "apt-get install chromium")
    try:
        output = _apt_install()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"{CHROMIUM} is missing and installing it failed: {exc}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing and `apt-get install chromium` did not provide it:\n{output[-2000:]}")
    return CHROMIUM


def dump_dom(chromium: str, url: str) -> str:
    """The DOM of ``url`` once its scripts have had VIRTUAL_TIME_MS of (virtual) time, as HTML."""
    with tempfile.TemporaryDirectory(prefix="ops-page-chromium-") as profile:
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--no-proxy-server", f"--user-data-dir={profile}", f"--virtual-time-budget={VIRTUAL_TIME_MS}",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise AssertionError(f"chromium failed on {url} (status {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


# -- A small DOM from the dump --------------------------------------------------------------------------------------

VOID_ELEMENTS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                           "track", "wbr"})


@dataclass(eq=False)
class Element:
    """One element of the dumped DOM."""

    tag: str
    attrs: dict[str, str]
    parent: Element | None = None
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        """Its text content, whitespace collapsed."""
        parts: list[str] = []

        def walk(node: Element) -> None:
            for child in node.children:
                if isinstance(child, str):
                    parts.append(child)
                else:
                    walk(child)

        walk(self)
        return " ".join("".join(parts).split())

    def iter(self) -> Iterator[Element]:
        """This element and all its descendants, in document order."""
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str | None) -> list[Element]:
        """Descendants (and self) with ``tag`` and these attributes (``data_x`` means ``data-x``; None: present)."""
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [node for node in self.iter()
                if (tag is None or node.tag == tag)
                and all(name in node.attrs and (value is None or node.attrs[name] == value)
                        for name, value in wanted.items())]

    def find(self, tag: str | None = None, **attrs: str | None) -> Element:
        """The first match of find_all; AssertionError if none."""
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag or '*'} {attrs}> in the page"
        return found[0]

    def ancestors(self) -> Iterator[Element]:
        """Its parent, grandparent, ... up to the document."""
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _DomBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Element(tag, {name: value or "" for name, value in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID_ELEMENTS:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Element(tag, {name: value or "" for name, value in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str) -> Element:
    """The dumped DOM as Elements."""
    builder = _DomBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


@dataclass
class Page:
    """The rendered ops page."""

    dom: Element

    @property
    def rows(self) -> dict[str, Element]:
        """Guard rows by service name."""
        return {row.attrs["data-service"]: row for row in self.dom.find_all("tr", data_service=None)}

    def cell(self, service: str, name: str) -> Element:
        """The ``data-field=name`` cell of a guard's row."""
        return self.rows[service].find("td", data_field=name)

    @property
    def tree(self) -> Element:
        return self.dom.find(id="tree")

    @property
    def error(self) -> Element:
        return self.dom.find(id="error")


def render(chromium: str, url: str) -> Page:
    """Load the page once and return what it rendered."""
    return Page(parse(dump_dom(chromium, url)))


def render_until(chromium: str, url: str, condition: Callable[[Page], Any], timeout: float, what: str) -> Page:
    """Reload the page until ``condition(page)`` holds; fail with the last rendering after ``timeout`` seconds."""
    last: list[Page] = []

    def attempt() -> Page | None:
        page = render(chromium, url)
        last[:] = [page]
        return page if condition(page) else None

    try:
        page: Page = wait_for(attempt, timeout, what, interval=0)
    except AssertionError as exc:
        rows = {name: (row.find(data_field="health").text(), row.find(data_field="circuit").attrs["data-value"])
                for name, row in last[0].rows.items()} if last else {}
        raise AssertionError(f"{exc}; last rendering: rows {rows}, error {last[0].error.text()!r}"
                             if last else str(exc)) from None
    return page


def api_tree_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, node) for every node of a GET /v1/actors tree, paths as the page writes them (names joined by /)."""
    here = f"{path}/{node['name']}" if path else node["name"]
    yield here, node
    for child in node.get("children", []):
        yield from api_tree_nodes(child, here)


# -- Against a running orchestrator ---------------------------------------------------------------------------------

def test_every_guard_has_a_row_showing_it_healthy_with_a_closed_circuit(
        chromium: str, orchestrator: Orchestrator, fresh_guards: dict[str, FakeGuard]) -> None:
    page = render_until(chromium, orchestrator.base_url + "/",
                        lambda p: set(p.rows) == set(fresh_guards)
                        and all(p.cell(name, "health").text() == "HEALTHY" for name in p.rows),
                        30, "a row per guard, each HEALTHY")
    listed = {s["name"]: s for s in orchestrator.get("/v1/services").json()["services"]}
    for name in fresh_guards:
        assert page.cell(name, "health").attrs["data-value"] == "HEALTHY"
        assert page.cell(name, "service_type").text() == listed[name]["service_type"]
        assert page.cell(name, "circuit").attrs["data-value"] == "closed"
        assert page.cell(name, "circuit").text().lower() == "closed"
        assert fresh_guards[name].url in page.cell(name, "name").text()
        for numeric in ("in_flight", "queued", "workers", "calls", "trips"):
            assert page.cell(name, numeric).text().split()[0].isdigit(), (name, numeric)
    ready = page.dom.find(id="ready")
    assert ready.attrs["data-state"] == "ready" and ready.text() == "Ready"
    updated = page.dom.find(id="updated")
    assert updated.attrs.get("datetime") and updated.text() != "never"
    assert "hidden" in page.error.attrs and page.error.text() == ""


def test_the_actor_tree_shows_the_root_and_each_guard_supervisor_with_its_pid(
        chromium: str, orchestrator: Orchestrator, fresh_guards: dict[str, FakeGuard]) -> None:
    api = orchestrator.get("/v1/actors").json()
    page = render(chromium, orchestrator.base_url + "/")
    tree = page.tree

    root = tree.find("li", data_path=api["name"])
    assert root.attrs["data-actor"] == api["name"]
    assert root.attrs["data-class"] == api["actor_class"]
    assert root.attrs["data-pid"] == str(api["pid"])
    assert root.attrs["data-responsive"] == "true"

    supervisors = {path: node for path, node in api_tree_nodes(api) if node["actor_class"] == "GuardSupervisor"}
    assert {node["name"] for node in supervisors.values()} == set(fresh_guards)
    for path, node in supervisors.items():
        item = tree.find("li", data_path=path)
        assert item.attrs["data-actor"] == node["name"]
        assert item.attrs["data-class"] == "GuardSupervisor"
        # Actors keep their processes while the orchestrator runs: the pid is the one the API reports, and alive.
        assert item.attrs["data-pid"] == str(node["pid"])
        assert Path(f"/proc/{node['pid']}").exists()
        assert root in item.ancestors(), f"{path} is not drawn under the root"
        line = item.children[0]
        assert isinstance(line, Element)
        assert f"pid {node['pid']}" in line.text() and "GuardSupervisor" in line.text()
        # A few key state fields, the guard's health among them.
        assert line.find(data_key="health").text() == "health HEALTHY"
    # Every actor the API reports (workers start on demand, so only those of the root and its direct children).
    drawn = {item.attrs["data-path"] for item in tree.find_all("li", data_actor=None)}
    assert {path for path, _ in api_tree_nodes(api) if path.count("/") <= 1} <= drawn


def test_a_guard_whose_breaker_opens_is_shown_with_an_open_circuit(
        chromium: str, fresh_guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    # An orchestrator of its own, whose breakers stay open a minute: the page cannot miss the open state, and the
    # module's shared orchestrator is left with closed breakers.
    with running({**guard_env(fresh_guards), "AEYON_BREAKER_OPEN": "60", "AEYON_BREAKER_OPEN_MAX": "60"},
                 tmp_path / "serve.log") as orch:
        url = orch.base_url + "/"
        render_until(chromium, url,
                     lambda p: "tokenguard" in p.rows and p.cell("tokenguard", "health").text() == "HEALTHY",
                     30, "tokenguard shown healthy")
        fresh_guards["tokenguard"].set_mode("status", code=500)
        codes = [orch.orchestrate("tokenguard", {"text": "x"}).json()["error"]["code"] for _ in range(12)]
        assert codes[-1] == "circuit_open", codes

        page = render_until(chromium, url, lambda p: p.cell("tokenguard", "circuit").attrs["data-value"] == "open",
                            30, "the page to show tokenguard's circuit open")
        circuit = page.cell("tokenguard", "circuit")
        assert circuit.text().startswith("OPEN")
        assert "s left" in circuit.text()
        assert "circuit-open" in page.rows["tokenguard"].attrs["class"].split()
        assert int(page.cell("tokenguard", "trips").text()) >= 1
        assert int(page.cell("tokenguard", "calls").text()) >= 10
        assert "1 circuit open" in page.dom.find(id="guards-summary").text()
        # The other guards are untouched, and the tree shows the supervisor's state the same way.
        assert {name: page.cell(name, "circuit").attrs["data-value"] for name in page.rows if name != "tokenguard"} \
            == {name: "closed" for name in fresh_guards if name != "tokenguard"}
        supervisor = page.tree.find("li", data_class="GuardSupervisor", data_actor="tokenguard")
        assert supervisor.find(data_key="circuit").text() == "circuit open"


# -- Against a stub serving the same page, for what a healthy orchestrator does not do ------------------------------

Route = Callable[[int], tuple[int, Any]]


@contextlib.contextmanager
def stub_server(routes: dict[str, Route]) -> Iterator[tuple[str, dict[str, int]]]:
    """Serve the ops page at / and ``routes`` (path -> f(nth request) -> (status, JSON body)); yield (url, hits)."""
    hits: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            with lock:
                nth = hits[path] = hits.get(path, 0) + 1
            if path == "/":
                status, data, kind = 200, ops_page(), "text/html; charset=utf-8"
            elif path in routes:
                status, body = routes[path](nth)
                data, kind = json.dumps(body).encode(), "application/json"
            else:
                status, data, kind = 404, b'{"error": "not found"}', "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _service(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "service_type": "tokenguard", "url": "http://127.0.0.1:1", "health": "HEALTHY",
            "circuit": "closed", "in_flight": 0, "queued": 0, "workers": 1, "workers_busy": 0, "calls": 0,
            "trips": 0, "failure_policy": "fail_closed", "responsive": True, **fields}


def test_a_failed_fetch_is_shown_and_the_page_keeps_polling(chromium: str) -> None:
    routes: dict[str, Route] = {
        "/ready": lambda n: (503, {"status": "starting"}),
        # The first poll fails; a later one must still come and be drawn.
        "/v1/services": lambda n: (500, {"error": "boom"}) if n == 1 else (200, {"services": [_service("tokenguard")]}),
        "/v1/actors": lambda n: (500, {"error": "boom"}),
    }
    with stub_server(routes) as (url, hits):
        page = render(chromium, url)
    assert hits["/v1/services"] >= 2 and hits["/v1/actors"] >= 2, hits
    assert set(page.rows) == {"tokenguard"}
    assert page.dom.find(id="guards").attrs["data-stale"] == "false"
    assert page.dom.find(id="actors").attrs["data-stale"] == "true"
    assert "hidden" not in page.error.attrs
    assert "v1/actors: HTTP 500" in page.error.text() and "still retrying" in page.error.text()
    # Not ready is a state, not a failure.
    ready = page.dom.find(id="ready")
    assert ready.attrs["data-state"] == "starting" and "not ready" in ready.text().lower()
    assert page.dom.find(id="updated").text() == "never"  # no refresh has fully succeeded yet


def test_data_from_the_endpoints_is_rendered_as_text_never_as_markup(chromium: str) -> None:
    evil = '<img src=x onerror="document.body.dataset.pwned=1"><b>bold</b>'
    services = {"services": [_service(evil, service_type=evil, url=evil, health=evil, circuit=evil,
                                      failure_policy=evil, calls=evil, responsive=False)]}
    actors = {"name": evil, "actor_class": evil, "address": evil, "pid": evil, "responsive": False,
              "state": {evil: evil, "nested": {"x": evil}},
              "children": [{"name": "child", "actor_class": evil, "address": "a", "pid": 7, "responsive": True,
                            "state": {"note": evil}, "children": []}]}
    routes: dict[str, Route] = {"/ready": lambda n: (200, {"status": "ready"}),
                                "/v1/services": lambda n: (200, services), "/v1/actors": lambda n: (200, actors)}
    with stub_server(routes) as (url, _):
        page = render(chromium, url)
    body = page.dom.find("body")
    assert "data-pwned" not in body.attrs
    assert not body.find_all("img") and not body.find_all("b")
    assert page.rows.keys() == {evil}
    for name in ("name", "service_type", "health", "circuit", "calls", "failure_policy"):
        assert evil in page.cell(evil, name).text(), name
    assert "NOT ANSWERING" in page.cell(evil, "name").text()
    root = page.tree.find("li", data_actor=evil)
    assert root.attrs["data-pid"] == evil and root.attrs["data-responsive"] == "false"
    assert evil in root.text() and "NOT RESPONDING" in root.text()
    assert page.tree.find("li", data_actor="child").find(data_key="note").text() == f"note {evil}"
    assert "hidden" in page.error.attrs
