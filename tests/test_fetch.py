"""URL fetching (api/kresize_api/fetch.py) against real HTTP(S) servers on loopback.

The servers are real sockets; only DNS answers are replaced, where a test needs a name to resolve to a given
address (rebinding, several addresses, a slow resolver). Because the servers live on 127.0.0.1, the
successful fetches allowlist it, and the refusals show what happens without (or beyond) the allowlist.
"""

from __future__ import annotations

import io
import ipaddress
import pickle
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kresize_api.fetch import Fetched, FetchError, FetchLimits, classify_address, fetch, redact_url
from PIL import Image

LOCAL = FetchLimits(allowed_hosts=("127.0.0.1",), timeout_seconds=5.0)


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (16, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "teal").save(out, fmt)
    return out.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG", (64, 48))


# ---- test servers -------------------------------------------------------------------------------------

Route = Callable[["_Handler"], None]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def do_GET(self) -> None:
        self.server.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            reply(self, 404, "text/plain", b"not found")
        else:
            route(self)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    block_on_close = False  # handlers that never end (on purpose) must not hold up the teardown
    routes: dict[str, Route]
    seen: list[Seen]
    stop: threading.Event


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


@dataclass
class Server:
    httpd: _HTTPServer
    scheme: str = "http"
    host: str = "127.0.0.1"
    sni: list[str | None] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def routes(self) -> dict[str, Route]:
        return self.httpd.routes

    @property
    def seen(self) -> list[Seen]:
        return self.httpd.seen

    @property
    def stop(self) -> threading.Event:
        return self.httpd.stop

    def url(self, path: str, host: str | None = None) -> str:
        host = host or self.host
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.port}{path}"


def start_server(cls: type[_HTTPServer] = _HTTPServer, bind: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None) -> Server:
    httpd = cls((bind, 0), _Handler)
    httpd.routes, httpd.seen, httpd.stop = {}, [], threading.Event()
    server = Server(httpd, host=bind)
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: server.sni.append(name)
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        server.scheme = "https"
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def close_server(server: Server) -> None:
    server.stop.set()
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = start_server()
    yield srv
    close_server(srv)


@pytest.fixture
def server6() -> Iterator[Server]:
    try:
        srv = start_server(_HTTPServer6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    yield srv
    close_server(srv)


def reply(h: _Handler, status: int, content_type: str | None, body: bytes,
          headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    if content_type is not None:
        h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Connection", "close")
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(body)


def serve(status: int = 200, content_type: str | None = "image/png", body: bytes = PNG,
          headers: dict[str, str] | None = None) -> Route:
    return lambda h: reply(h, status, content_type, body, headers)


def redirect(location: str, status: int = 302) -> Route:
    return serve(status, "text/html", b"moved", {"Location": location})


def chunked(chunks: Iterator[bytes] | list[bytes], content_type: str = "image/png", delay: float = 0.0) -> Route:
    """A chunked body (no Content-Length), written until the chunks run out or the client goes away."""
    def route(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()
        try:
            for chunk in chunks:
                if h.server.stop.is_set():
                    return
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                h.wfile.flush()
                time.sleep(delay)
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
    return route


def raw(data: bytes, then_hold: float = 0.0) -> Route:
    """Write `data` as the whole response (status line included), then keep the connection open a while."""
    def route(h: _Handler) -> None:
        try:
            h.wfile.write(data)
            h.wfile.flush()
        except OSError:
            return
        h.server.stop.wait(then_hold)
    return route


def trickle(data: bytes, every: float) -> Route:
    """Write `data` one byte at a time, each well inside any socket timeout, for as long as the client reads."""
    def route(h: _Handler) -> None:
        for i in range(len(data)):
            if h.server.stop.wait(every):
                return
            try:
                h.wfile.write(data[i:i + 1])
                h.wfile.flush()
            except OSError:
                return
    return route


def forever(byte: bytes = b"x") -> Iterator[bytes]:
    while True:
        yield byte * 8192


def failure(url: str, limits: FetchLimits = LOCAL, dest: io.BytesIO | None = None) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetch(url, dest if dest is not None else io.BytesIO(), limits)
    return caught.value


def limits(**changes: Any) -> FetchLimits:
    return FetchLimits(**{**LOCAL.__dict__, **changes})


# ---- the address classifier ---------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "kind"), [
    # IPv4
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"),
    ("100.64.0.1", "shared (CGNAT)"), ("100.100.100.200", "shared (CGNAT)"), ("100.127.255.255", "shared (CGNAT)"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("192.0.2.1", "reserved"),
    ("198.18.0.1", "reserved"), ("192.0.0.170", "reserved"),
    # IPv6
    ("::1", "loopback"), ("::", "unspecified"), ("fc00::1", "private"), ("fd00:ec2::254", "private"),
    ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"), ("febf::1", "link-local"),
    ("ff02::1", "multicast"), ("2001:db8::1", "reserved"), ("2001::1", "reserved"), ("fec0::1", "private"),
    ("100::1", "reserved"), ("::127.0.0.1", "reserved"),
    # IPv6 leading to IPv4: mapped, NAT64, 6to4
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("::ffff:10.0.0.1", "private"),
    ("::ffff:100.64.0.1", "shared (CGNAT)"), ("::ffff:0.0.0.0", "unspecified"),
    ("64:ff9b::a00:1", "private"), ("64:ff9b::a9fe:a9fe", "link-local"), ("2002:7f00:1::", "loopback"),
    ("64:ff9b:1::1", "private"),
    # public, including the neighbours of the blocked ranges
    ("8.8.8.8", None), ("1.1.1.1", None), ("93.184.216.34", None), ("11.0.0.0", None), ("9.255.255.255", None),
    ("172.15.255.255", None), ("172.32.0.0", None), ("100.63.255.255", None), ("100.128.0.0", None),
    ("169.253.255.255", None), ("169.255.0.0", None), ("126.255.255.255", None), ("128.0.0.0", None),
    ("223.255.255.255", None),
    ("2606:4700:4700::1111", None), ("2001:4860:4860::8888", None), ("::ffff:8.8.8.8", None),
    ("64:ff9b::808:808", None), ("2002:808:808::1", None),
])
def test_classifies_addresses(address: str, kind: str | None) -> None:
    assert classify_address(address) == kind
    assert classify_address(ipaddress.ip_address(address)) == kind


@given(st.ip_addresses(v=4))
def test_ipv6_forms_of_an_ipv4_address_are_judged_like_it(v4: ipaddress.IPv4Address) -> None:
    expected = classify_address(v4)
    for v6 in (f"::ffff:{v4}", f"64:ff9b::{v4}"):
        assert classify_address(v6) == expected, v6


@given(st.ip_addresses())
def test_nothing_python_calls_non_global_or_special_is_public(
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if classify_address(ip) is None:
        assert ip.is_global
        assert not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)


# ---- successful fetches -------------------------------------------------------------------------------

def test_fetches_an_image_into_the_file(server: Server) -> None:
    server.routes["/pics/my%20photo.png"] = serve(content_type="image/png; charset=binary")
    dest = io.BytesIO()
    url = server.url("/pics/my%20photo.png?size=large")
    got = fetch(url, dest, LOCAL)
    assert got == Fetched(url, url, "my photo.png", "image/png", len(PNG))
    assert dest.getvalue() == PNG
    [seen] = server.seen
    assert seen.path == "/pics/my%20photo.png?size=large"
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["user-agent"].startswith("kresize")
    assert seen.headers["accept-encoding"] == "identity"
    assert "authorization" not in seen.headers and "cookie" not in seen.headers


def test_fetches_a_chunked_octet_stream_without_a_name(server: Server) -> None:
    parts = [JPEG[i:i + 1000] for i in range(0, len(JPEG), 1000)]
    server.routes["/"] = chunked(parts, "application/octet-stream")
    dest = io.BytesIO()
    got = fetch(server.url("/"), dest, LOCAL)
    assert (got.filename, got.content_type, got.size) == ("download", "application/octet-stream", len(JPEG))
    assert dest.getvalue() == JPEG


def test_a_body_of_exactly_max_bytes_is_accepted(server: Server) -> None:
    server.routes["/len.png"] = serve(body=PNG)
    server.routes["/chunked.png"] = chunked([PNG[:10], PNG[10:]])
    for path in ("/len.png", "/chunked.png"):
        assert fetch(server.url(path), io.BytesIO(), limits(max_bytes=len(PNG))).size == len(PNG)


def test_follows_redirects_up_to_the_limit(server: Server) -> None:
    server.routes["/a"] = redirect("/b", 301)
    server.routes["/b"] = redirect(server.url("/c"), 303)
    server.routes["/c"] = redirect("d/final%2Bname.png?token=1#frag", 307)
    server.routes["/d/final%2Bname.png"] = serve()
    got = fetch(server.url("/a"), io.BytesIO(), limits(max_redirects=3))
    assert got.final_url == server.url("/d/final%2Bname.png?token=1")
    assert got.filename == "final+name.png"
    assert [s.path for s in server.seen] == ["/a", "/b", "/c", "/d/final%2Bname.png?token=1"]


def test_too_many_redirects_and_loops(server: Server) -> None:
    server.routes["/a"] = redirect("/b")
    server.routes["/b"] = redirect("/c")
    server.routes["/c"] = serve()
    assert failure(server.url("/a"), limits(max_redirects=1)).reason == "redirects"
    assert fetch(server.url("/a"), io.BytesIO(), limits(max_redirects=2)).size == len(PNG)
    server.routes["/loop"] = redirect("/loop", 308)
    assert failure(server.url("/loop")).reason == "redirects"
    assert failure(server.url("/a"), limits(max_redirects=0)).reason == "redirects"


def test_allowlist_by_name_or_network(server: Server) -> None:
    server.routes["/x.png"] = serve()
    by_name = limits(allowed_hosts=("LOCALHOST",))
    assert fetch(server.url("/x.png", host="localhost"), io.BytesIO(), by_name).size == len(PNG)
    # the name is allowed, not its address
    assert failure(server.url("/x.png"), by_name).reason == "address"
    by_network = limits(allowed_hosts=("127.0.0.0/8",))
    assert fetch(server.url("/x.png", host="localhost"), io.BytesIO(), by_network).size == len(PNG)
    # another spelling of 127.0.0.1 is the same address
    assert fetch(server.url("/x.png", host="2130706433"), io.BytesIO(), by_network).size == len(PNG)


# ---- refusals by address ------------------------------------------------------------------------------

def test_loopback_is_refused_without_the_allowlist(server: Server) -> None:
    server.routes["/x.png"] = serve()
    for host in ("127.0.0.1", "2130706433", "127.1", "0x7f.0.0.1"):
        error = failure(server.url("/x.png", host=host), FetchLimits())
        assert error.reason == "address", host
        assert "private network" in str(error) or "loopback" in str(error)
    assert server.seen == []


def test_a_name_resolving_to_loopback_is_refused(server: Server) -> None:
    server.routes["/x.png"] = serve()
    error = failure(server.url("/x.png", host="localhost"), FetchLimits())
    assert error.reason == "address" and "loopback" in str(error)
    assert "127.0.0.1" not in str(error)  # what an internal name resolves to is not told
    assert server.seen == []


@pytest.mark.parametrize("location", [
    "http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
    "http://100.100.100.200/", "http://[::ffff:127.0.0.2]/", "http://127.0.0.2/", "http://0.0.0.0/",
    "http://[::]/", "http://metadata.google.internal/computeMetadata/v1/",
])
def test_an_allowlisted_hop_cannot_redirect_into_the_network(server: Server, location: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    real = socket.getaddrinfo

    def recording(host: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    server.routes["/start"] = redirect(location)
    error = failure(server.url("/start"), limits(timeout_seconds=2.0))
    assert error.reason == "address"
    assert "metadata.google.internal" not in lookups  # refused by name, before any lookup


def test_a_redirect_to_ipv6_loopback_is_refused_before_connecting(server: Server, server6: Server) -> None:
    server6.routes["/x.png"] = serve()
    server.routes["/start"] = redirect(server6.url("/x.png"))
    assert failure(server.url("/start")).reason == "address"
    time.sleep(0.1)
    assert server6.seen == []
    # and the IPv6 server does work when allowed
    assert fetch(server.url("/start"), io.BytesIO(), limits(allowed_hosts=("127.0.0.1", "::1"))).size == len(PNG)


def test_any_non_public_address_refuses_the_host(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def two_addresses(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host == "mixed.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    assert failure(f"http://mixed.test:{server.port}/x.png").reason == "address"


def test_connects_to_the_address_it_checked(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: a second lookup would get a private address; there is none, and Host is the name."""
    answers = ["127.0.0.1", "10.0.0.1"]
    lookups: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host != "images.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    server.routes["/x.png"] = serve()
    got = fetch(f"http://images.test:{server.port}/x.png", io.BytesIO(), LOCAL)
    assert got.size == len(PNG) and lookups == ["images.test"]
    assert server.seen[0].headers["host"] == f"images.test:{server.port}"
    # every hop is resolved and checked again: the next answer is private, so a redirect there is refused
    server.routes["/hop"] = redirect(f"http://images.test:{server.port}/x.png")
    assert failure(server.url("/hop")).reason == "address"


# ---- refusals by URL ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://example.com/x.png", "scheme"), ("file:///etc/passwd", "scheme"), ("gopher://example.com/", "scheme"),
    ("javascript:alert(1)", "scheme"), ("example.com/x.png", "scheme"),
    ("http://user:hunter2@example.com/x.png", "url"), ("http://token@example.com/x.png", "url"),
    ("http://example.com/" + "a" * 2040, "url"), ("http://exa mple.com/", "url"), ("http://example.com/\nx", "url"),
    ("http:///x.png", "url"), ("http://example.com:99999/", "url"), ("http://example.com:0/", "url"),
    ("http://[::1/", "url"),
])
def test_refuses_bad_urls(url: str, reason: str) -> None:
    error = failure(url, FetchLimits())
    assert error.reason == reason
    assert "hunter2" not in str(error) and "hunter2" not in error.url


def test_redirects_are_held_to_the_same_url_rules(server: Server) -> None:
    server.routes["/ftp"] = redirect("ftp://example.com/x.png")
    server.routes["/file"] = redirect("file:///etc/passwd")
    server.routes["/creds"] = redirect(f"http://user:pw@127.0.0.1:{server.port}/x.png")
    server.routes["/x.png"] = serve()
    assert failure(server.url("/ftp")).reason == "scheme"
    assert failure(server.url("/file")).reason == "scheme"
    assert failure(server.url("/creds")).reason == "url"
    assert failure(server.url("/x.png"), limits(allowed_schemes=("https",))).reason == "scheme"


def test_dns_failure() -> None:
    error = failure("http://no-such-host.invalid/x.png", FetchLimits(timeout_seconds=10))
    assert error.reason == "dns"


def test_errors_do_not_show_the_query_or_credentials(server: Server) -> None:
    error = failure(server.url("/missing.png?X-Amz-Signature=s3cr3t&token=abc"))
    assert error.reason == "status" and "404" in str(error)
    assert error.url == server.url("/missing.png")
    assert "s3cr3t" not in str(error)
    assert redact_url("https://u:p@Example.com:8443/a/b.png?sig=1#f") == "https://example.com:8443/a/b.png"
    assert redact_url("http://u:p@[::1/x?sig=1") == "http://[::1/x"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.url, copy.reason, str(copy)) == (error.url, error.reason, str(error))


# ---- refusals by response -----------------------------------------------------------------------------

def test_refuses_other_statuses(server: Server) -> None:
    server.routes["/gone"] = serve(410)
    server.routes["/error"] = serve(500, "image/png")
    server.routes["/partial"] = serve(206)
    server.routes["/nowhere"] = serve(302, "text/html", b"")
    for path in ("/gone", "/error", "/partial", "/nowhere", "/absent"):
        assert failure(server.url(path)).reason == "status", path


@pytest.mark.parametrize(("content_type", "headers"), [
    ("text/html", {}), ("text/html; charset=utf-8", {}), (None, {}), ("application/json", {}),
    ("image/png", {"Content-Encoding": "gzip"}),
])
def test_refuses_what_is_not_an_image(server: Server, content_type: str | None, headers: dict[str, str]) -> None:
    server.routes["/x"] = serve(content_type=content_type, headers=headers)
    dest = io.BytesIO()
    assert failure(server.url("/x"), dest=dest).reason == "type"
    assert dest.getvalue() == b""


def test_refuses_a_declared_length_over_the_limit_before_reading(server: Server) -> None:
    server.routes["/huge.png"] = raw(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n"
                                     + PNG, then_hold=10)
    dest = io.BytesIO()
    started = time.monotonic()
    error = failure(server.url("/huge.png"), limits(max_bytes=1000), dest)
    assert error.reason == "size" and "1000000000" in str(error)
    assert time.monotonic() - started < 5 and dest.getvalue() == b""  # not the server's 10 s hold


def test_stops_a_chunked_body_at_the_limit(server: Server) -> None:
    server.routes["/endless.png"] = chunked(forever())
    dest = io.BytesIO()
    started = time.monotonic()
    assert failure(server.url("/endless.png"), limits(max_bytes=100_000), dest).reason == "size"
    assert time.monotonic() - started < 10  # at the limit, not at the 20 s deadline
    assert len(dest.getvalue()) <= 100_000


def test_stops_a_body_without_length_at_the_limit(server: Server) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n"
    server.routes["/close.png"] = raw(head + b"y" * 300_000)
    server.routes["/fits.png"] = raw(head + PNG)
    dest = io.BytesIO()
    assert failure(server.url("/close.png"), limits(max_bytes=100_000), dest).reason == "size"
    assert len(dest.getvalue()) <= 100_000
    assert fetch(server.url("/fits.png"), io.BytesIO(), LOCAL).size == len(PNG)


def test_a_body_cut_short_is_an_error(server: Server) -> None:
    server.routes["/short.png"] = raw(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n"
                                      b"Connection: close\r\n\r\n" + PNG[:100])
    server.routes["/short-chunked.png"] = raw(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
                                              b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                              b"1000\r\n" + PNG[:100])
    assert failure(server.url("/short.png")).reason == "network"
    assert failure(server.url("/short-chunked.png")).reason == "network"


def test_garbage_and_refused_connections_are_network_errors(server: Server) -> None:
    server.routes["/garbage"] = raw(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert failure(server.url("/garbage")).reason == "network"
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert failure(f"http://127.0.0.1:{port}/x.png").reason == "network"


# ---- the deadline -------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", [
    pytest.param(chunked(forever(b"z"), delay=0.05), id="slow-body"),
    pytest.param(trickle(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n" + b"X-Pad: y\r\n" * 500, every=0.02),
                 id="trickled-headers"),
    pytest.param(trickle(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n" + PNG * 50,
                         every=0.02), id="trickled-body-until-close"),
    pytest.param(raw(b"", then_hold=10), id="silent"),
    pytest.param(raw(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n", then_hold=10), id="silent-body"),
])
def test_the_whole_download_has_one_deadline(server: Server, route: Route) -> None:
    server.routes["/slow.png"] = route
    started = time.monotonic()
    error = failure(server.url("/slow.png"), limits(timeout_seconds=1.0, max_bytes=10**9))
    elapsed = time.monotonic() - started
    assert error.reason == "timeout", str(error)
    assert 0.9 < elapsed < 4.0  # the 1 s deadline, with room for a loaded machine; the servers go on far longer


def test_a_slow_resolver_counts_against_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow(*_args: Any, **_kwargs: Any) -> Any:
        release.wait(5)
        raise socket.gaierror("too late")

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    started = time.monotonic()
    assert failure("http://slow.test/x.png", FetchLimits(timeout_seconds=0.5)).reason == "timeout"
    assert time.monotonic() - started < 3  # the 0.5 s deadline, not the resolver's 5 s
    release.set()


# ---- https --------------------------------------------------------------------------------------------

def make_cert(directory: Path, name: str) -> Path:
    """A self-signed certificate for DNS:`name` only (no IP address), key included, in one PEM file."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    pem = directory / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(directory / f"{name}.key"), "-out", str(pem)], check=True, capture_output=True)
    pem.write_text(pem.read_text() + (directory / f"{name}.key").read_text())
    return pem


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("certs")
    return {name: make_cert(directory, name) for name in ("localhost", "elsewhere.test")}


def tls_server(cert: Path) -> Server:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert)
    return start_server(tls=context)


def test_https_verifies_the_name_while_connecting_to_the_checked_address(
        certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["localhost"]))
    server = tls_server(certs["localhost"])
    try:
        server.routes["/x.png"] = serve()
        got = fetch(server.url("/x.png", host="localhost"), io.BytesIO(), LOCAL)
        assert got.size == len(PNG)
        assert server.sni == ["localhost"]
        assert server.seen[0].headers["host"] == f"localhost:{server.port}"
        # the certificate names localhost, not 127.0.0.1: by address, verification fails
        error = failure(server.url("/x.png"))
        assert error.reason == "network" and "certificate" in str(error)
        # untrusted issuer
        monkeypatch.setenv("SSL_CERT_FILE", str(certs["elsewhere.test"]))
        assert failure(server.url("/x.png", host="localhost")).reason == "network"
    finally:
        close_server(server)


def test_https_refuses_a_certificate_for_another_name(certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["elsewhere.test"]))
    server = tls_server(certs["elsewhere.test"])
    try:
        server.routes["/x.png"] = serve()
        error = failure(server.url("/x.png", host="localhost"))
        assert error.reason == "network" and "certificate" in str(error)
        assert server.seen == []
    finally:
        close_server(server)


# ---- concurrency --------------------------------------------------------------------------------------

def test_fetches_in_parallel_threads(server: Server) -> None:
    server.routes["/x.png"] = serve()
    results: list[int] = []

    def one() -> None:
        results.append(fetch(server.url("/x.png"), io.BytesIO(), LOCAL).size)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [len(PNG)] * 8
