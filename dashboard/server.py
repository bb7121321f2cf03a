"""``splitmq dashboard``: a small web server, its page, and the live picture behind it.

The standard library's ``ThreadingHTTPServer`` is enough for a page a few
people watch: a thread per connection, a Server-Sent Events stream per page
(the browser's ``EventSource`` reconnects by itself), JSON endpoints, and two
form posts. No framework, nothing to download: the page is a few static files
shipped as package data.

Endpoints (docs/dashboard.md):

    GET  /                     the page
    GET  /static/<file>        its script and style
    GET  /api/state            the live picture as JSON
    GET  /api/events           the same, pushed as SSE ``snapshot`` events on change
    GET  /api/models           the pool's models
    GET  /api/models/<ref>     one model version: its cut table and codecs
    POST /api/models           upload a model (form: name, model, labels, mean, std, config)
    POST /api/run              run an image through a split (form: model, cut, codec, image)

Posts must carry the ``X-Splitmq-Dashboard`` header, which the page sends: a form
on another site cannot set it without the browser asking this server first
(CORS preflight), which it never allows, so no other page can upload into the pool.
A post naming another page as its Origin, or a Host this server does not answer to
(loopback names, the bound address, this machine's names, ``--allow-host``), is refused
too: a page elsewhere that renamed itself to this address (DNS rebinding) still sends its
own name as Host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from splitmq.dashboard.feed import Feed
from splitmq.dashboard.forms import Form
from splitmq.dashboard.models import ModelDesk, NotInPool
from splitmq.dashboard.state import LiveState
from splitmq.dashboard.tryout import Tryout
from splitmq.shared.errors import SplitMQError, UserError
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 200 * 1000 * 1000
POST_HEADER = "X-Splitmq-Dashboard"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Events go out at most this often however fast results arrive; a comment keeps idle
#: streams open through proxies.
EVENT_INTERVAL_S = 0.25
KEEPALIVE_S = 15.0
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
STATIC = resources.files("splitmq.dashboard") / "static"
#: The static files, read once: a request can only ever name one of these.
STATIC_FILES = {
    f.name: f.read_bytes() for f in STATIC.iterdir() if f.name.endswith(tuple(STATIC_TYPES))
}


class Dashboard:
    """The web server, the MQTT feed and the pool; a context manager."""

    def __init__(
        self,
        settings: Settings,
        host: str = "127.0.0.1",
        port: int = 8080,
        max_upload: int = DEFAULT_MAX_UPLOAD,
        allow_hosts: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        self.hosts = {*LOOPBACK_NAMES, host, socket.gethostname(), socket.getfqdn(), *allow_hosts}
        self.max_upload = max_upload
        self.feed: Feed | None = None
        self.state = LiveState(connected=lambda: self.feed is not None and self.feed.connected)
        pool = ModelPool(settings.pool)
        self.models = ModelDesk(pool, max_upload)
        self.tryout = Tryout(pool, settings.threads, settings.max_payload_bytes)
        try:
            self.httpd = _Server((host, port), _Handler, self)
        except OSError as exc:
            raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="dashboard-http", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        shown = host if isinstance(host, str) and ":" not in host else f"[{host!s}]"
        return f"http://{shown}:{port}/"

    def start(self) -> Dashboard:
        try:
            self.feed = Feed(self.settings, self.state).start()
        except BaseException:
            self.httpd.server_close()
            raise
        self._thread.start()
        return self

    def close(self) -> None:
        self.state.stop()  # event streams end
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        if self.feed is not None:
            self.feed.close()

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # open event streams end on their own when the state stops

    def __init__(self, address: tuple[str, int], handler: type, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "splitmq-dashboard"
    timeout = 30  # seconds a client may take to send a request: a stalled one frees its thread

    @property
    def dash(self) -> Dashboard:
        return self.server.dashboard

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- routing -------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self._safely(lambda: self._get(path))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self._safely(lambda: self._post(path))

    def _get(self, path: str) -> None:
        if path in ("/", "/index.html"):
            self._static("index.html")
        elif path.startswith("/static/"):
            self._static(path.removeprefix("/static/"))
        elif path == "/api/state":
            self._send(HTTPStatus.OK, self.dash.state.snapshot_json(), "application/json")
        elif path == "/api/events":
            self._events()
        elif path == "/api/models":
            self._json(self.dash.models.listing())
        elif path.startswith("/api/models/"):
            self._json(self.dash.models.detail(unquote(path.removeprefix("/api/models/"))))
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _post(self, path: str) -> None:
        if path not in ("/api/models", "/api/run"):
            self._error(HTTPStatus.NOT_FOUND, f"nothing to post to at {path}")
            return
        body = self._body()
        if body is None:
            return
        refused = self._foreign()  # answered after reading the body: the sender hears it
        if refused:
            self._error(HTTPStatus.FORBIDDEN, refused)
            return
        form = Form.parse(self.headers.get("Content-Type", ""), body)
        if path == "/api/models":
            self._json(self.dash.models.upload(form), HTTPStatus.CREATED)
            return
        cut = form.text("cut")
        if not cut.isdigit():
            raise UserError(f"cut must be a cut number like 4, got {cut!r}")
        image = form.file("image", "a JPEG or PNG image")
        self._json(
            self.dash.tryout.run(form.text("model"), int(cut), form.text("codec"), image.data)
        )

    def _foreign(self) -> str | None:
        """Why a post may come from another site's page (see module docstring), or None.

        A page elsewhere cannot set the header; one that renamed its own host to this
        address (DNS rebinding) still sends its own name as Host, which is not one this
        dashboard answers to; a browser names the page that posts as Origin.
        """
        if self.headers.get(POST_HEADER) != "1":
            return f"posts need the {POST_HEADER}: 1 header"
        host = self.headers.get("Host", "")
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != host:
            return f"a post from a page at {origin} is not from this dashboard ({host})"
        if urlsplit(f"//{host}").hostname not in self.dash.hosts:
            return f"a post to {host!r} is not for this dashboard (--allow-host adds a name)"
        return None

    def _body(self) -> bytes | None:
        """The posted body, if its declared size is within the limit (else answered at
        once: a page checks the size before it sends, see models.js)."""
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self._error(HTTPStatus.LENGTH_REQUIRED, "a post needs a Content-Length")
            return None
        limit = self.dash.max_upload
        if int(length) > limit:
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the upload is {int(length) / 1e6:.1f} MB, over the dashboard's limit of "
                f"{limit / 1e6:.1f} MB (splitmq dashboard --max-upload)",
            )
            return None
        return self.rfile.read(int(length))

    def _safely(self, action: Any) -> None:
        """Every failure becomes a JSON error with a status that says whose it was."""
        try:
            action()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away
        except NotInPool as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc))
        except UserError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except SplitMQError as exc:  # codec and request failures of a tryout carry a code
            internal = exc.code == "internal"
            if internal:
                log.error("dashboard request %s failed: %s", self.path, exc)
            self._error(
                HTTPStatus.INTERNAL_SERVER_ERROR if internal else HTTPStatus.BAD_REQUEST, str(exc)
            )
        except Exception as exc:
            log.exception("dashboard request %s failed", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"unexpected {type(exc).__name__}: {exc}")

    # -- answers -----------------------------------------------------------------------

    def _static(self, name: str) -> None:
        data = STATIC_FILES.get(name)
        if data is None:
            self._error(HTTPStatus.NOT_FOUND, f"no such file: {name}")
            return
        kind = STATIC_TYPES["." + name.rsplit(".", 1)[-1]]
        self._send(HTTPStatus.OK, data, kind)

    def _json(self, doc: object, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the page went away
            self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _events(self) -> None:
        """The live picture as Server-Sent Events: a snapshot now and after each change."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(b"retry: 1000\n\n")
        state, seen = self.dash.state, -1
        while not state.stopped:
            version = state.wait(seen, KEEPALIVE_S)
            if version == seen:
                self.wfile.write(b": keep-alive\n\n")
            else:
                data = state.snapshot_json()
                self.wfile.write(b"event: snapshot\ndata: " + data + b"\n\n")
                seen = version
            self.wfile.flush()
            time.sleep(EVENT_INTERVAL_S)  # pacing, not waiting for anything: a few a second
