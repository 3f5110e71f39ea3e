"""fetch_url: read a web page from an allow-listed host, guarded against SSRF."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import httpx

from agentloop.application.tools import Tool, ToolContext, ToolExample
from agentloop.errors import ToolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 3
MAX_BODY_BYTES = 1_000_000
MAX_TEXT_CHARS = 4000
DEFAULT_PORTS = {"http": 80, "https": 443}
HTML_TYPES = {"text/html", "application/xhtml+xml"}
TEXT_TYPES = {"application/json", "application/xml", "application/javascript", "application/ld+json"}
DISABLED_MESSAGE = "fetch_url is disabled: no hosts are allow-listed (AGENTLOOP_FETCH_ALLOWED_HOSTS)"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public_address(ip: IPAddress) -> bool:
    """True for globally routable unicast addresses; False for private, loopback, link-local, multicast."""
    if ip.is_multicast or not ip.is_global:  # is_global alone lets multicast such as 224.0.0.1 through
        return False
    embedded = _embedded_ipv4(ip)
    return embedded is None or is_public_address(embedded)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    # IPv6 forms that carry an IPv4 address (::ffff:127.0.0.1, NAT64, 6to4, Teredo) reach that address.
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def host_allowed(host: str, allowed_hosts: tuple[str, ...]) -> bool:
    """True when host is an allowed host or a subdomain of one."""
    host = host.rstrip(".").lower()
    return any(host == allowed or host.endswith("." + allowed) for allowed in allowed_hosts)


@dataclass(frozen=True)
class UrlFetcher:
    """Fetches pages; every hop, redirects included, is re-checked against the allow-list and SSRF guard."""

    allowed_hosts: tuple[str, ...]
    timeout_s: float = 10.0
    # Only tests relax this, to fetch from a server on 127.0.0.1.
    address_ok: Callable[[IPAddress], bool] = is_public_address

    async def fetch(self, url: str) -> str:
        """Return the visible text of the page at url."""
        if not self.allowed_hosts:
            raise ToolError(DISABLED_MESSAGE)
        target = self._checked_url(url)
        # trust_env=False: a proxy from the environment would resolve and connect past the SSRF guard.
        client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False)
        async with client:
            for _ in range(MAX_REDIRECTS + 1):
                outcome = await self._get(client, target)
                if isinstance(outcome, str):
                    return outcome
                target = self._checked_url(str(outcome))
        raise ToolError(f"too many redirects (limit {MAX_REDIRECTS})")

    def _checked_url(self, url: str) -> httpx.URL:
        try:
            target = httpx.URL(url.strip())
        except httpx.InvalidURL as exc:
            raise ToolError(f"invalid URL: {exc}") from exc
        if target.scheme not in DEFAULT_PORTS:
            raise ToolError("only http and https URLs can be fetched")
        if target.userinfo:
            raise ToolError("URLs with a user name or password are not allowed")
        host = target.raw_host.decode("ascii")
        if not host:
            raise ToolError(f"invalid URL: {url}")
        if not host_allowed(host, self.allowed_hosts):
            raise ToolError(f"host {host} is not allow-listed")
        return target

    async def _get(self, client: httpx.AsyncClient, target: httpx.URL) -> str | httpx.URL:
        """Fetch one hop; return the page text, or the URL a redirect points to."""
        host = target.raw_host.decode("ascii")
        ip = await self._resolve(host, target.port or DEFAULT_PORTS[target.scheme])
        # Connect to the address we checked, not a second DNS answer (DNS rebinding); TLS still verifies
        # the certificate against the real host name through the SNI extension.
        pinned = target.copy_with(host=str(ip))
        extensions = {"sni_hostname": host} if target.scheme == "https" else {}
        headers = {"Host": target.netloc.decode("ascii"), "User-Agent": "agentloop-fetch/1.0"}
        try:
            async with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                if response.is_redirect:
                    return target.join(response.headers["location"])
                if response.status_code >= 400:
                    raise ToolError(f"HTTP {response.status_code} from {target}")
                body = await _read_capped(response)
                return _page_text(body, response)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ToolError(f"could not fetch {target}: {type(exc).__name__}: {exc}") from exc

    async def _resolve(self, host: str, port: int) -> IPAddress:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ToolError(f"cannot resolve host {host}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        # Every answer must be public: an attacker-controlled zone may mix public and internal records.
        if not addresses or not all(self.address_ok(ip) for ip in addresses):
            raise ToolError(f"host {host} resolves to a private or reserved address; refusing to fetch")
        return addresses[0]


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk[: MAX_BODY_BYTES - len(body)]
        if len(body) >= MAX_BODY_BYTES:
            break
    return bytes(body)


def _page_text(body: bytes, response: httpx.Response) -> str:
    content_type = response.headers.get("content-type", "text/plain").split(";")[0].strip().lower()
    text = body.decode(response.charset_encoding or "utf-8", errors="replace")
    if content_type in HTML_TYPES:
        text = html_to_text(text)
    elif not content_type.startswith("text/") and content_type not in TEXT_TYPES:
        raise ToolError(f"cannot read {content_type} content; only text and HTML pages")
    if len(text) > MAX_TEXT_CHARS:
        return text[:MAX_TEXT_CHARS] + f"\n[... {len(text) - MAX_TEXT_CHARS} more characters]"
    return text or "(empty page)"


class _TextExtractor(HTMLParser):
    SKIPPED = frozenset({"script", "style", "noscript", "template", "svg"})
    BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "title", "section", "article"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIPPED:
            self._skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """The visible text of an HTML page: scripts and styles dropped, whitespace collapsed."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = (" ".join(line.split()) for line in "".join(extractor.parts).splitlines())
    return "\n".join(line for line in lines if line)


def fetch_tool(fetcher: UrlFetcher, timeout_s: float) -> Tool:
    """The `fetch_url` tool."""

    async def handle(arguments: dict[str, Any], ctx: ToolContext) -> str:
        return await fetcher.fetch(str(arguments["url"]))

    return Tool(
        name="fetch_url",
        description="Fetch a web page from an allowed site and return its text.",
        parameters={
            "type": "object",
            "properties": {"url": {"type": "string", "description": "An http(s) URL."}},
            "required": ["url"],
            "additionalProperties": False,
        },
        example=ToolExample(
            question="What does https://example.com say?",
            arguments={"url": "https://example.com"},
            result="Example Domain\nThis domain is for use in illustrative examples in documents.",
            answer="example.com says it is a domain for use in illustrative examples in documents.",
        ),
        handler=handle,
        timeout_s=timeout_s,
    )
