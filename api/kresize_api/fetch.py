"""Download an image from a user-supplied URL without becoming a proxy into the cluster (SSRF).

Why it is built the way it is:

- The host is resolved once per hop, every address is checked, and the connection goes to a checked
  address (never a second lookup, which DNS rebinding could answer differently). The Host header, SNI
  and certificate verification still use the URL's hostname.
- Redirects are followed by hand, and each hop is checked like the first.
- One deadline covers the whole fetch (DNS, connect, TLS, headers, body). Socket timeouts alone cannot
  enforce it (a server trickling a byte at a time never trips them), so a watchdog timer shuts the socket
  down when time is up.
- The body is streamed to the caller's file in chunks and counted as it arrives, so a body without a
  Content-Length (chunked) is cut off as soon as it passes the limit.
- Only the standard library is used (http.client on a socket we connect ourselves): the API package
  declares no HTTP client, and pinning the address needs control over the socket anyway.

Blocking code: the API runs it in a worker thread. Nothing here logs; error messages and `FetchError.url`
name the URL without credentials, query or fragment (which can carry signed tokens).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Final
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SockAddr = tuple[str, int] | tuple[str, int, int, int]

MAX_URL_LENGTH: Final = 2048
USER_AGENT: Final = "kresize-fetch/1"
_CHUNK: Final = 64 * 1024
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_SUPPORTED_SCHEMES: Final = frozenset(_DEFAULT_PORTS)
# Names of cloud metadata services, refused before any lookup (their addresses are refused anyway,
# but some resolve only inside the cloud, and a refusal by name does not depend on the resolver).
METADATA_HOSTS: Final = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.internal",
    "instance-data", "instance-data.ec2.internal", "metadata.tencentyun.com", "metadata.platformequinix.com",
})


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 50 * 1024 * 1024
    timeout_seconds: float = 20.0  # the whole download: DNS, connect, TLS, headers and body
    max_redirects: int = 3
    # Hostnames (exact, case-insensitive) or addresses/CIDRs exempt from the non-public-address refusal:
    # an allowlist for internal image servers.
    allowed_hosts: tuple[str, ...] = ()
    allowed_schemes: tuple[str, ...] = ("http", "https")  # only http and https are ever supported


@dataclass(frozen=True)
class Fetched:
    url: str  # as submitted (surrounding whitespace removed)
    final_url: str  # after redirects, without fragment; may hold a query: redact_url() it before logging
    filename: str  # last path segment of final_url, percent-decoded, or "download"; not sanitized
    content_type: str  # the media type the server declared, lowercased, without parameters
    size: int  # bytes written to dest


class FetchError(Exception):
    """A URL that could not or must not be fetched. str() is a message fit for the user who submitted it;
    `reason` is a short label for metrics: url, scheme, address, dns, redirects, status, type, size,
    timeout or network. `url` is redacted (no credentials, query or fragment)."""

    def __init__(self, url: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason

    def __reduce__(self) -> tuple[type[FetchError], tuple[str, str, str]]:
        return type(self), (self.url, self.reason, str(self))


# ---- addresses ----------------------------------------------------------------------------------------

def _nets(*specs: tuple[str, str]) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(net), kind) for net, kind in specs)


# Explicit tables, so the verdict does not shift with the Python version's idea of `is_private`/`is_global`
# (which changed in 3.11/3.12 patch releases); `is_global` is still consulted as a final catch-all.
_V4_BLOCKED = _nets(
    ("0.0.0.0/8", "unspecified"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "shared (CGNAT)"),
    ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"), ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"), ("192.0.2.0/24", "reserved"), ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"), ("198.18.0.0/15", "reserved"), ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"), ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
)
_V6_BLOCKED = _nets(
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("64:ff9b:1::/48", "private"),
    ("100::/64", "reserved"), ("2001::/23", "reserved"), ("2001:db8::/32", "reserved"),
    ("fc00::/7", "private"), ("fe80::/10", "link-local"), ("fec0::/10", "private"), ("ff00::/8", "multicast"),
    ("::/8", "reserved"),  # after ::/128 and ::1/128; also the deprecated IPv4-compatible ::a.b.c.d
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to: IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 (2002::/16)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def classify_address(address: str | IPAddress) -> str | None:
    """None if the address is public (fetchable); otherwise what kind of non-public address it is
    ("loopback", "private", "link-local", ...). IPv6 addresses that embed an IPv4 one are judged by it."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip if ip.scope_id is None else ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded = _embedded_v4(ip)
        if embedded is not None:
            return classify_address(embedded)
        table = _V6_BLOCKED
    else:
        table = _V4_BLOCKED
    for network, kind in table:
        if ip in network:
            return kind
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


class _Allowlist:
    """FetchLimits.allowed_hosts, parsed: exact hostnames, and networks (a bare address is a /32 or /128)."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            text = entry.strip().strip("[]")
            try:
                self.networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self.names.add(_name_key(text))

    def allows_name(self, host: str) -> bool:
        return _name_key(host) in self.names

    def allows_address(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.networks)


def _name_key(host: str) -> str:
    return host.lower().rstrip(".")


# ---- URLs ---------------------------------------------------------------------------------------------

def redact_url(url: str) -> str:
    """scheme://host[:port]/path of a URL: no credentials, query or fragment. For messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        try:
            port = parts.port
        except ValueError:
            port = None
        netloc = host if port is None else f"{host}:{port}"
        text = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        text = re.sub(r"^([^:/?#]*://)[^/?#]*@", r"\1", re.split(r"[?#]", url, maxsplit=1)[0])
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 200 else text[:199] + "…"


@dataclass(frozen=True)
class _Target:
    """One checked URL: what to connect to and what to ask for."""

    url: str  # absolute, without fragment
    shown: str  # redacted, for messages
    scheme: str
    host: str  # ASCII (IDNA) hostname or address literal, as in the URL, without brackets
    port: int
    request_path: str  # path and query, percent-encoded


def _parse(url: str, allowed_schemes: frozenset[str]) -> _Target:
    shown = redact_url(url)
    if len(url) > MAX_URL_LENGTH:
        raise FetchError(shown, "url", f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise FetchError(shown, "url", f"{shown} is not a valid URL: it contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError(shown, "url", f"{shown} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in allowed_schemes:
        allowed = " and ".join(sorted(allowed_schemes)) or "no"
        raise FetchError(shown, "scheme", f"{shown}: only {allowed} URLs can be fetched")
    if "@" in parts.netloc:
        raise FetchError(shown, "url", f"{shown}: URLs with credentials (user:password@) are not accepted")
    host = parts.hostname or ""
    if not host:
        raise FetchError(shown, "url", f"{shown} is not a valid URL: it has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise FetchError(shown, "url", f"{shown} is not a valid URL: bad host name") from None
    if port == 0:
        raise FetchError(shown, "url", f"{shown} is not a valid URL: port 0")
    safe = "/%:@!$&'()*+,;=~"
    request_path = quote(parts.path or "/", safe=safe)
    if parts.query:
        request_path += "?" + quote(parts.query, safe=safe + "?")
    absolute = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    return _Target(absolute, shown, scheme, host, port or _DEFAULT_PORTS[scheme], request_path)


def _filename(url: str) -> str:
    segment = urlsplit(url).path.rsplit("/", 1)[-1]
    return unquote(segment, errors="replace") or "download"


# ---- the deadline -------------------------------------------------------------------------------------

class _Deadline:
    """One clock for the whole fetch, with a watchdog that shuts down the open socket when it runs out, so
    blocking calls return even if the server keeps each single read just inside a socket timeout."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                # The plain socket's shutdown, also for an SSLSocket: it wakes a blocked recv without
                # touching the TLS state the fetching thread is using.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def left(self, shown: str) -> float:
        """Seconds left, or a timeout FetchError if there are none."""
        remaining = self._end - time.monotonic()
        if remaining <= 0 or self.expired:
            raise _timeout(shown)
        return remaining

    def track(self, sock: socket.socket, shown: str) -> None:
        """Make `sock` the one the watchdog shuts down (closing it at once if time is already up)."""
        with self._lock:
            if not self.expired:
                self._sock = sock
                return
        sock.close()
        raise _timeout(shown)

    def release(self, sock: socket.socket, response: http.client.HTTPResponse | None = None) -> None:
        """Close `sock` (and the response reading from it, which keeps the descriptor open until closed too),
        under the lock, so the watchdog never shuts down a descriptor that was closed and reused."""
        with self._lock:
            if self._sock is sock:
                self._sock = None
            if response is not None:
                response.close()
            sock.close()

    def cancel(self) -> None:
        self._timer.cancel()


def _timeout(shown: str) -> FetchError:
    return FetchError(shown, "timeout", f"{shown}: the download took too long and was stopped")


def _network_error(target: _Target, deadline: _Deadline, error: BaseException) -> FetchError:
    if deadline.expired or isinstance(error, TimeoutError):
        return _timeout(target.shown)
    if isinstance(error, ssl.SSLCertVerificationError):
        return FetchError(target.shown, "network", f"{target.shown}: the server's TLS certificate is not valid "
                                                   f"for {target.host}")
    if isinstance(error, ssl.SSLError):
        return FetchError(target.shown, "network", f"{target.shown}: the TLS connection failed")
    if isinstance(error, ConnectionRefusedError):
        return FetchError(target.shown, "network", f"{target.shown}: the server refused the connection")
    if isinstance(error, http.client.HTTPException):
        return FetchError(target.shown, "network", f"{target.shown}: the server's answer is not valid HTTP "
                                                   "or was cut short")
    return FetchError(target.shown, "network", f"{target.shown}: the connection failed")


# ---- one hop ------------------------------------------------------------------------------------------

def _resolve(target: _Target, deadline: _Deadline) -> list[tuple[socket.AddressFamily, SockAddr]]:
    """getaddrinfo, within the deadline (the system resolver has no timeout of its own we could pass)."""
    box: list[object] = []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM,
                                          proto=socket.IPPROTO_TCP))
        except (OSError, UnicodeError) as error:
            box.append(error)

    thread = threading.Thread(target=lookup, name="kresize-fetch-dns", daemon=True)
    thread.start()
    thread.join(deadline.left(target.shown))
    if not box:
        raise _timeout(target.shown)
    result = box[0]
    if isinstance(result, BaseException) or not result:
        raise FetchError(target.shown, "dns", f"{target.shown}: the host name {target.host} could not be resolved")
    assert isinstance(result, list)
    return [(family, sockaddr) for family, _, _, _, sockaddr in result]


def _checked_addresses(target: _Target, allow: _Allowlist,
                       deadline: _Deadline) -> list[tuple[socket.AddressFamily, SockAddr]]:
    """The addresses to connect to: all of them pass, or the host is refused."""
    refusal = f"{target.shown}: addresses inside the private network cannot be fetched"
    if _name_key(target.host) in METADATA_HOSTS and not allow.allows_name(target.host):
        raise FetchError(target.shown, "address", refusal)
    addresses = _resolve(target, deadline)
    if allow.allows_name(target.host):
        return addresses
    for _, sockaddr in addresses:
        ip = ipaddress.ip_address(sockaddr[0])
        kind = classify_address(ip)
        if kind is not None and not allow.allows_address(ip):
            raise FetchError(target.shown, "address", f"{target.shown}: the host has a non-public ({kind}) "
                                                      "address, which cannot be fetched")
    return addresses


def _connect(target: _Target, addresses: list[tuple[socket.AddressFamily, SockAddr]],
             deadline: _Deadline) -> socket.socket:
    """A connected (and for https, verified TLS) socket to one of the checked addresses, tried in order."""
    error: BaseException = OSError("no address")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        deadline.track(sock, target.shown)
        try:
            sock.settimeout(deadline.left(target.shown))
            sock.connect(sockaddr)
        except OSError as exc:
            deadline.release(sock)
            error = exc
            continue
        except BaseException:
            deadline.release(sock)
            raise
        return sock if target.scheme != "https" else _tls(target, sock, deadline)
    raise _network_error(target, deadline, error)


def _tls(target: _Target, sock: socket.socket, deadline: _Deadline) -> socket.socket:
    """TLS over the connected socket, with SNI and verification for the URL's hostname, not the address."""
    context = ssl.create_default_context()  # verifies the chain and the hostname; honours SSL_CERT_FILE
    try:
        tls = context.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
    except BaseException as exc:
        deadline.release(sock)
        if isinstance(exc, OSError | ValueError):
            raise _network_error(target, deadline, exc) from None
        raise
    deadline.track(tls, target.shown)  # wrap_socket detached `sock`: the watchdog must now watch `tls`
    try:
        tls.settimeout(deadline.left(target.shown))
        tls.do_handshake()
    except BaseException as exc:
        deadline.release(tls)
        if isinstance(exc, OSError | ValueError):
            raise _network_error(target, deadline, exc) from None
        raise
    return tls


def _host_header(target: _Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == _DEFAULT_PORTS[target.scheme] else f"{host}:{target.port}"


def _request(target: _Target, sock: socket.socket, deadline: _Deadline) -> http.client.HTTPResponse:
    """GET on an already connected socket (so http.client never connects, or resolves, by itself)."""
    conn = http.client.HTTPConnection(target.host, target.port)
    conn.sock = sock
    try:
        conn.putrequest("GET", target.request_path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", _host_header(target))
        conn.putheader("User-Agent", USER_AGENT)
        conn.putheader("Accept", "image/*, application/octet-stream;q=0.5")
        conn.putheader("Accept-Encoding", "identity")
        conn.putheader("Connection", "close")
        conn.endheaders()
        sock.settimeout(deadline.left(target.shown))
        return conn.getresponse()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _network_error(target, deadline, exc) from None


def _media_type(response: http.client.HTTPResponse) -> str:
    return (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()


def _stream(target: _Target, sock: socket.socket, response: http.client.HTTPResponse, dest: BinaryIO,
            limits: FetchLimits, deadline: _Deadline) -> int:
    """Copy the body to `dest`, failing as soon as it passes max_bytes or the deadline. Returns its size."""
    declared = response.length  # None when chunked or absent
    if declared is not None and declared > limits.max_bytes:
        raise FetchError(target.shown, "size", f"{target.shown}: the file is {declared} bytes, more than the "
                                               f"limit of {limits.max_bytes} bytes")
    size = 0
    while True:
        try:
            sock.settimeout(deadline.left(target.shown))
            chunk = response.read1(_CHUNK)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise _network_error(target, deadline, exc) from None
        if not chunk:
            break
        size += len(chunk)
        if size > limits.max_bytes:
            raise FetchError(target.shown, "size", f"{target.shown}: the file is larger than the limit of "
                                                   f"{limits.max_bytes} bytes")
        dest.write(chunk)
    deadline.left(target.shown)  # the watchdog's shutdown ends a body of unknown length like a close would
    if declared is not None and size < declared:
        raise FetchError(target.shown, "network", f"{target.shown}: the download was cut short")
    return size


# ---- the whole fetch ----------------------------------------------------------------------------------

def fetch(url: str, dest: BinaryIO, limits: FetchLimits) -> Fetched:
    """Download `url` into `dest` (written from its current position) within `limits`, or raise FetchError.

    On FetchError `dest` may hold part of a body: the caller discards it. Errors writing to `dest`
    propagate unchanged."""
    submitted = url.strip()
    schemes = frozenset(s.lower() for s in limits.allowed_schemes) & _SUPPORTED_SCHEMES
    allow = _Allowlist(limits.allowed_hosts)
    deadline = _Deadline(limits.timeout_seconds)
    try:
        target = _parse(submitted, schemes)
        for hop in range(limits.max_redirects + 1):
            addresses = _checked_addresses(target, allow, deadline)
            sock = _connect(target, addresses, deadline)
            response: http.client.HTTPResponse | None = None
            try:
                response = _request(target, sock, deadline)
                if response.status in _REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise FetchError(target.shown, "status", f"{target.shown}: the server answered "
                                                                 f"HTTP {response.status} without a Location")
                    if hop == limits.max_redirects:
                        raise FetchError(target.shown, "redirects", f"{target.shown}: more than "
                                                                    f"{limits.max_redirects} redirects")
                    target = _parse(urljoin(target.url, location.strip()), schemes)
                    continue
                if response.status != 200:
                    raise FetchError(target.shown, "status", f"{target.shown}: the server answered "
                                                             f"HTTP {response.status} (expected 200)")
                media_type = _media_type(response)
                if not (media_type.startswith("image/") or media_type == "application/octet-stream"):
                    raise FetchError(target.shown, "type", f"{target.shown} is not an image (Content-Type "
                                                           f"{media_type[:100] or 'missing'})")
                encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
                if encoding != "identity":
                    raise FetchError(target.shown, "type", f"{target.shown}: the server sent the file "
                                                           "compressed, which is not supported")
                size = _stream(target, sock, response, dest, limits, deadline)
                return Fetched(submitted, target.url, _filename(target.url), media_type, size)
            finally:
                deadline.release(sock, response)
        raise AssertionError("unreachable: the last hop returns or raises")  # pragma: no cover
    except FetchError as error:
        if deadline.expired and error.reason != "timeout":
            # The watchdog shut the socket mid-answer: what was parsed after that (headers cut short, so no
            # Content-Type, say) is not what the server said. The fetch ran out of time.
            raise _timeout(error.url) from None
        raise
    finally:
        deadline.cancel()
