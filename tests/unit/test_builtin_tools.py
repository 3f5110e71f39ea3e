"""The built-in tools, run for real: calculator, a python subprocess, files in tmp_path, a loopback server."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agentloop.adapters.tools import builtin_tools
from agentloop.adapters.tools.calculator import evaluate, format_number
from agentloop.adapters.tools.clock import current_time
from agentloop.adapters.tools.files import list_files, read_file, resolve_in_workspace, write_file
from agentloop.adapters.tools.sandbox import SandboxLimits, network_isolation_prefix, run_python
from agentloop.adapters.tools.web import UrlFetcher, host_allowed, html_to_text, is_public_address
from agentloop.application.tools import ToolContext, ToolRegistry
from agentloop.domain.model import ToolCall
from agentloop.errors import ToolError
from agentloop.settings import Settings

# -----------------------------------------------------------------------------------------------------------
# calculator
# -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1234*5678", "7006652"),
        ("17 * 23", "391"),
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("2 ** 3 ** 2", "512"),
        ("2^10", "1024"),
        ("-3 + 5", "2"),
        ("-(2 + 3)", "-5"),
        ("+7", "7"),
        ("--4", "4"),
        ("-2 ** 2", "-4"),
        ("10 / 2", "5"),
        ("7 / 2", "3.5"),
        ("1 / 3", "0.333333333333"),
        ("0.1 + 0.2", "0.3"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("2 ** -1", "0.5"),
        ("1.5e3 + 1", "1501"),
        ("12345678901234567890 * 98765432109876543210", "1219326311370217952237463801111263526900"),
        ("99999999999999999999 / 3", "33333333333333333333"),
        ("sqrt(16)", "4"),
        ("sqrt(2)", "1.41421356237"),
        ("abs(-5)", "5"),
        ("round(2.567, 2)", "2.57"),
        ("round(2.5)", "2"),
        ("floor(2.7) + ceil(2.2)", "5"),
        ("log(8, 2)", "3"),
        ("log10(1000)", "3"),
        ("exp(0)", "1"),
        ("sin(0) + cos(0)", "1"),
        ("tan(0)", "0"),
        ("min(3, 1, 2)", "1"),
        ("max(3, 1, 2)", "3"),
        ("pi", "3.14159265359"),
        ("2 * e", "5.43656365692"),
        ("3 × 4", "12"),
        ("3 x 4", "12"),
        ("8 ÷ 2", "4"),
        ("1_000 * 3", "3000"),
        ("1e12", "1000000000000"),
        ("1e20", "1e+20"),
        ("  6 * 7  ", "42"),
    ],
)
def test_calculator_evaluates(expression: str, expected: str) -> None:
    assert format_number(evaluate(expression)) == expected


def test_integers_stay_exact_ints() -> None:
    assert evaluate("1234*5678") == 7006652
    assert isinstance(evaluate("1234*5678"), int)
    assert isinstance(evaluate("10 / 2"), int)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "unknown function"),
        ("().__class__.__bases__[0].__subclasses__()", "unknown function"),
        ("(1).__class__", "unsupported"),
        ("os", "unknown name"),
        ("x", "unknown name"),
        ("lambda: 1", "unsupported"),
        ("[1, 2]", "unsupported"),
        ("'a' * 3", "unsupported constant"),
        ("True + 1", "unsupported constant"),
        ("1j * 2", "unsupported constant"),
        ("1 < 2", "unsupported"),
        ("1 if 1 else 2", "unsupported"),
        ("print(1)", "unknown function"),
        ("sqrt(x=4)", "positional"),
        ("max(*[1, 2])", "positional"),
        ("sqrt(1, 2)", "arguments"),
        ("9**9**9", "too large"),
        ("2 ** 100000", "too large"),
        ("10 ** 1001", "too large"),
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("1 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("1e308 * 10", "not a finite number"),
        ("exp(1000)", "cannot evaluate"),
        ("sqrt(-1)", "cannot evaluate"),
        ("(-8) ** 0.5", "complex"),
        ("", "empty"),
        ("   ", "empty"),
        ("1 +", "invalid expression"),
        ("1" * 501, "too long"),
        ("-" * 400 + "1", "nested too deeply"),
        ("-" * 499 + "1", "nested too deeply"),
        ("(-" * 110 + "1" + ")" * 110, "nested too deeply"),
        ("1; import os", "invalid expression"),
        ("a = 1", "invalid expression"),
    ],
)
def test_calculator_refuses(expression: str, reason: str) -> None:
    with pytest.raises(ToolError, match=reason):
        evaluate(expression)


def test_huge_exponent_is_refused_quickly() -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError):
        evaluate("9**9**9**9")
    assert time.perf_counter() - started < 1


# -----------------------------------------------------------------------------------------------------------
# python sandbox: a real subprocess with a tmp_path workspace
# -----------------------------------------------------------------------------------------------------------

LIMITS = SandboxLimits(timeout_s=2, memory_mb=256)


async def test_python_prints(tmp_path: Path) -> None:
    assert await run_python("print(6 * 7)", tmp_path, LIMITS) == "42"


async def test_python_with_no_output(tmp_path: Path) -> None:
    assert await run_python("x = 1", tmp_path, LIMITS) == "(no output)"


async def test_python_writes_into_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "conversation-1"
    await run_python("open('out.txt', 'w').write('hi')", workspace, LIMITS)
    assert (workspace / "out.txt").read_text() == "hi"
    assert read_file(workspace, "out.txt") == "hi"


async def test_python_exception_returns_traceback_and_exit_code(tmp_path: Path) -> None:
    output = await run_python("print('before')\n1 / 0", tmp_path, LIMITS)
    assert output.startswith("before\n[stderr]\nTraceback")
    assert "ZeroDivisionError: division by zero" in output
    assert output.endswith("[exit code 1]")


async def test_python_infinite_loop_times_out(tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError, match="python timed out after 2s"):
        await run_python("while True:\n    pass", tmp_path, LIMITS)
    assert time.perf_counter() - started < 5


async def test_python_timeout_kills_child_processes(tmp_path: Path) -> None:
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '30'])\ntime.sleep(30)"
    with pytest.raises(ToolError, match="timed out"):
        await run_python(code, tmp_path, LIMITS)
    await asyncio.sleep(0.2)
    assert not _sleepers_in(tmp_path)


def _sleepers_in(workspace: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(proc / "cwd").resolve() == workspace.resolve():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


async def test_python_memory_bomb_fails_inside_the_sandbox(tmp_path: Path) -> None:
    output = await run_python("b = bytearray(2 * 1024 ** 3)\nprint(len(b))", tmp_path, LIMITS)
    assert "MemoryError" in output
    assert "[exit code 1]" in output


async def test_python_output_flood_is_truncated(tmp_path: Path) -> None:
    output = await run_python("print('x' * 100_000)", tmp_path, LIMITS)
    assert len(output) < 3200
    assert "more characters" in output


async def test_python_does_not_inherit_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTLOOP_SECRET_TOKEN", "s3cret")
    code = "import os; print(sorted(os.environ)); print(os.getcwd())"
    output = await run_python(code, tmp_path, LIMITS)
    assert "AGENTLOOP_SECRET_TOKEN" not in output
    assert str(tmp_path.resolve()) in output


async def test_python_stdin_is_closed(tmp_path: Path) -> None:
    assert await run_python("import sys; print(repr(sys.stdin.read()))", tmp_path, LIMITS) == "''"


async def test_python_network_is_isolated_when_unshare_works(tmp_path: Path) -> None:
    prefix = await asyncio.to_thread(network_isolation_prefix)
    if not prefix:
        pytest.skip("unshare --net is not available here")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
        )
        output = await run_python(code, tmp_path, SandboxLimits(timeout_s=5, isolation_prefix=prefix))
    assert "connected" not in output
    assert "[exit code 1]" in output


# -----------------------------------------------------------------------------------------------------------
# file tools
# -----------------------------------------------------------------------------------------------------------


def test_files_round_trip(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    assert list_files(workspace) == "(empty)"
    assert write_file(workspace, "notes.txt", "héllo") == "wrote 6 bytes to notes.txt"
    write_file(workspace, "data/numbers.csv", "1,2,3")
    assert read_file(workspace, "notes.txt") == "héllo"
    assert read_file(workspace, "./data/numbers.csv") == "1,2,3"
    assert list_files(workspace, ".") == "data/\nnotes.txt"
    assert list_files(workspace, "data") == "numbers.csv"


@pytest.mark.parametrize("path", ["../outside.txt", "a/../../outside.txt", "..", "/etc/passwd", "", "a\x00b"])
def test_files_refuse_paths_outside_the_workspace(tmp_path: Path, path: str) -> None:
    with pytest.raises(ToolError):
        resolve_in_workspace(tmp_path / "ws", path)
    with pytest.raises(ToolError):
        write_file(tmp_path / "ws", path, "x")
    assert not (tmp_path / "outside.txt").exists()


def test_files_refuse_a_symlink_that_leaves_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "etc").symlink_to("/etc")
    for call in (lambda: read_file(workspace, "etc/passwd"), lambda: list_files(workspace, "etc")):
        with pytest.raises(ToolError, match="leaves the workspace"):
            call()
    with pytest.raises(ToolError, match="leaves the workspace"):
        write_file(workspace, "etc/agentloop-test", "x")


def test_files_report_missing_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="no such file"):
        read_file(tmp_path, "missing.txt")
    with pytest.raises(ToolError, match="no such folder"):
        list_files(tmp_path, "missing")
    (tmp_path / "big.txt").write_bytes(b"x" * 100_001)
    with pytest.raises(ToolError, match="at most 100000"):
        read_file(tmp_path, "big.txt")
    with pytest.raises(ToolError, match="at most 1000000"):
        write_file(tmp_path, "huge.txt", "x" * 1_000_001)


# -----------------------------------------------------------------------------------------------------------
# current_time
# -----------------------------------------------------------------------------------------------------------

MOMENT = datetime(2025, 3, 14, 8, 26, 53, 123456, tzinfo=UTC)


def test_current_time_in_utc() -> None:
    assert current_time("UTC", now=MOMENT) == "2025-03-14T08:26:53+00:00 (Friday, UTC)"
    assert current_time("utc", now=MOMENT) == "2025-03-14T08:26:53+00:00 (Friday, UTC)"


def test_current_time_in_a_named_zone() -> None:
    assert current_time("Asia/Tokyo", now=MOMENT) == "2025-03-14T17:26:53+09:00 (Friday, Asia/Tokyo)"
    assert current_time("America/New_York", now=MOMENT).startswith("2025-03-14T04:26:53-04:00")


def test_current_time_without_a_clock_override_is_now() -> None:
    stamp = current_time("UTC").split(" ")[0]
    assert abs((datetime.fromisoformat(stamp) - datetime.now(UTC)).total_seconds()) < 5


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "/etc/localtime", "Europe"])
def test_current_time_refuses_unknown_zones(zone: str) -> None:
    with pytest.raises(ToolError, match="unknown time zone"):
        current_time(zone)


# -----------------------------------------------------------------------------------------------------------
# fetch_url: guards, then a real loopback server with the address policy relaxed (no external requests)
# -----------------------------------------------------------------------------------------------------------


async def test_fetch_is_disabled_without_an_allow_list() -> None:
    with pytest.raises(ToolError, match="fetch_url is disabled: no hosts are allow-listed"):
        await UrlFetcher(()).fetch("https://example.com/")


@pytest.mark.parametrize(
    "url", ["https://evil.example/", "https://notexample.com/", "https://example.com.evil.example/"]
)
async def test_fetch_refuses_hosts_not_allow_listed(url: str) -> None:
    with pytest.raises(ToolError, match="is not allow-listed"):
        await UrlFetcher(("example.com",)).fetch(url)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "javascript:alert(1)"])
async def test_fetch_refuses_other_schemes(url: str) -> None:
    with pytest.raises(ToolError, match="only http and https"):
        await UrlFetcher(("example.com",)).fetch(url)


async def test_fetch_refuses_credentials_in_urls() -> None:
    with pytest.raises(ToolError, match="user name or password"):
        await UrlFetcher(("example.com",)).fetch("https://user:pw@example.com/")


async def test_fetch_refuses_allow_listed_localhost_because_it_is_loopback() -> None:
    with pytest.raises(ToolError, match="private or reserved address"):
        await UrlFetcher(("localhost",)).fetch("http://localhost:8000/")


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1/", "http://[::1]/", "http://10.0.0.1/"],
)
async def test_fetch_refuses_internal_addresses_even_when_allow_listed(url: str) -> None:
    host = url.split("/")[2].strip("[]")
    with pytest.raises(ToolError, match="private or reserved address"):
        await UrlFetcher((host,)).fetch(url)


def test_host_allow_list_matches_hosts_and_subdomains() -> None:
    allowed = ("example.com",)
    assert host_allowed("example.com", allowed)
    assert host_allowed("docs.example.com", allowed)
    assert host_allowed("Example.COM.", allowed)
    assert not host_allowed("badexample.com", allowed)
    assert not host_allowed("example.com.evil.org", allowed)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("2002:7f00:1::", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_html_to_text_drops_scripts_and_styles() -> None:
    html = (
        "<html><head><title>Hi</title><style>p {color: red}</style></head>"
        "<body><script>alert('x')</script><h1>Title</h1><p>Some   <b>bold</b> text &amp; more</p>"
        "<noscript>enable js</noscript><ul><li>one</li><li>two</li></ul></body></html>"
    )
    assert html_to_text(html) == "Hi\nTitle\nSome bold text & more\none\ntwo"


PAGES: dict[str, tuple[int, str, bytes]] = {
    "/page": (200, "text/html; charset=utf-8", b"<p>Hello <script>x()</script>world</p>"),
    "/plain": (200, "text/plain", b"just text"),
    "/big": (200, "text/plain", b"y" * 2_000_000),
    "/image": (200, "image/png", b"\x89PNG"),
    "/missing": (404, "text/plain", b"nope"),
}
REDIRECTS = {
    "/hop": "/page",
    "/away": "http://evil.example/",
    "/loop": "/loop",
    "/metadata": "http://169.254.169.254/",
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path in REDIRECTS:
            self.send_response(302)
            self.send_header("Location", REDIRECTS[self.path])
            self.end_headers()
            return
        status, content_type, body = PAGES.get(self.path, (404, "text/plain", b""))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def loopback_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _loopback_fetcher() -> UrlFetcher:
    # Relaxing the address policy is the only way to reach a test server; the allow-list still applies.
    return UrlFetcher(("127.0.0.1", "169.254.169.254"), timeout_s=5, address_ok=lambda ip: ip.is_loopback)


async def test_fetch_returns_visible_text(loopback_server: str) -> None:
    fetcher = _loopback_fetcher()
    assert await fetcher.fetch(loopback_server + "/page") == "Hello world"
    assert await fetcher.fetch(loopback_server + "/plain") == "just text"


async def test_fetch_follows_redirects_within_the_allow_list(loopback_server: str) -> None:
    assert await _loopback_fetcher().fetch(loopback_server + "/hop") == "Hello world"


async def test_fetch_rechecks_every_redirect(loopback_server: str) -> None:
    fetcher = _loopback_fetcher()
    with pytest.raises(ToolError, match=r"host evil\.example is not allow-listed"):
        await fetcher.fetch(loopback_server + "/away")
    with pytest.raises(ToolError, match="private or reserved address"):
        await fetcher.fetch(loopback_server + "/metadata")
    with pytest.raises(ToolError, match="too many redirects"):
        await fetcher.fetch(loopback_server + "/loop")


async def test_fetch_reports_errors_and_caps_bodies(loopback_server: str) -> None:
    fetcher = _loopback_fetcher()
    with pytest.raises(ToolError, match="HTTP 404"):
        await fetcher.fetch(loopback_server + "/missing")
    with pytest.raises(ToolError, match="image/png"):
        await fetcher.fetch(loopback_server + "/image")
    text = await fetcher.fetch(loopback_server + "/big")
    assert text.startswith("y" * 4000)
    assert "[... 996000 more characters]" in text


# -----------------------------------------------------------------------------------------------------------
# through the registry, as the agent loop calls them
# -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> ToolRegistry:
    settings = Settings(data_dir=tmp_path, fetch_allowed_hosts=[], python_timeout_s=2, _env_file=None)
    return ToolRegistry(builtin_tools(settings))


@pytest.fixture
def context(tmp_path: Path) -> ToolContext:
    return ToolContext(conversation_id="c1", workspace=tmp_path / "workspaces" / "c1")


def test_builtin_tools_are_all_registered_with_an_example(registry: ToolRegistry) -> None:
    names = ["calculator", "current_time", "fetch_url", "list_files", "python", "read_file", "write_file"]
    assert registry.names() == names
    for tool in registry.select(names):
        assert tool.example is not None and tool.handler is not None
        assert tool.description.endswith(".") and len(tool.description) <= 90
        assert tool.parameters["type"] == "object" and tool.parameters["additionalProperties"] is False
        assert set(tool.parameters["required"]) <= set(tool.parameters["properties"])
        assert set(tool.example.arguments) <= set(tool.parameters["properties"])
    assert registry.get("python").timeout_s > 2


async def test_registry_runs_the_calculator(registry: ToolRegistry, context: ToolContext) -> None:
    result = await registry.execute(ToolCall("calculator", {"expression": "1234*5678"}), context)
    assert result.ok and result.output == "7006652"


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("calculator", {}, "invalid arguments"),
        ("calculator", {"expression": 5}, "invalid arguments"),
        ("calculator", {"expression": "1", "extra": 1}, "invalid arguments"),
        ("calculator", {"expression": "__import__('os')"}, "unknown function"),
        ("read_file", {"path": "/etc/passwd"}, "absolute paths are not allowed"),
        ("current_time", {"timezone": "Nowhere/Special"}, "unknown time zone"),
        ("fetch_url", {"url": "https://example.com"}, "fetch_url is disabled"),
    ],
)
async def test_registry_turns_failures_into_observations(
    registry: ToolRegistry, context: ToolContext, name: str, arguments: dict[str, object], message: str
) -> None:
    result = await registry.execute(ToolCall(name, arguments), context)
    assert not result.ok
    assert result.error is not None and message in result.error
    assert result.output.startswith("error: ")


async def test_registry_runs_python_and_files_in_one_workspace(
    registry: ToolRegistry, context: ToolContext
) -> None:
    await registry.execute(ToolCall("write_file", {"path": "n.txt", "content": "21"}), context)
    result = await registry.execute(
        ToolCall("python", {"code": "print(int(open('n.txt').read()) * 2)"}), context
    )
    assert result.ok and result.output == "42"
    listing = await registry.execute(ToolCall("list_files", {}), context)
    assert listing.output == "n.txt"
    clock = await registry.execute(ToolCall("current_time", {}), context)
    assert clock.ok and clock.output.endswith(", UTC)")


async def test_registry_reports_the_sandbox_timeout(registry: ToolRegistry, context: ToolContext) -> None:
    result = await registry.execute(ToolCall("python", {"code": "import time\ntime.sleep(60)"}), context)
    assert not result.ok
    assert result.error == "python timed out after 2s"


def test_unshare_probe_is_harmless() -> None:
    prefix = network_isolation_prefix()
    assert prefix == () or prefix[0] == "unshare"
