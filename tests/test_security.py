"""Security: TLS, plain http, where each secret travels, what is stored, what is seen.

- TLS verification stays on for the client the manager opens: a loopback HTTPS
  server with a self-signed certificate gets no request from it.
- ``http://`` is refused unless it points at loopback or ``allow_insecure=True``.
- On the wire: the token only in ``Authorization: Bearer``, only to the Indigo hosts;
  the refresh token only in the body of the refresh request; the password's digest
  only in the body of the sign-in; the password itself nowhere; no secret in a URL.
- Stored state: FileStore writes files 0600 in a directory 0700; nothing stores the
  password or its digest (FileStore, MemoryStore, RedisStore where a server runs).
- Everything observable is scanned for every secret used: log records of every
  logger at DEBUG (with tracebacks), reprs, exception texts and tracebacks, stats,
  CLI output, and store files where they should hold none.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import ssl
import stat
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx
import pytest

from indigo_auth import (
    AsyncTokenManager,
    FileStore,
    IndigoAuthError,
    InvalidCredentialsError,
    MemoryStore,
    TokenStore,
)
from indigo_auth._api import md5_hex, normalize_base_url
from indigo_auth.testing import Fault, IndigoEmulator

pytestmark = pytest.mark.anyio

EMAIL = "secure@example.com"
PASSWORD = "Tr0ub4dor&3 is the password"
WRONG = "not the password at all"
API = "https://api.indigobrowser.com"
LAUNCHER = "https://launcher.indigobrowser.com:45011"
#: Where the bearer may go: the API and the launcher (scheme, host, port).
ALLOWED = {("https", "api.indigobrowser.com", 443), ("https", "launcher.indigobrowser.com", 45011)}


# -- secrets and the places they may appear ----------------------------------------------------


@dataclass
class Secrets:
    """Every secret a test used or saw go by, by kind."""

    passwords: set[str] = field(default_factory=lambda: {PASSWORD, WRONG})
    tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)

    @property
    def digests(self) -> set[str]:
        return {md5_hex(p) for p in self.passwords}

    def all(self) -> dict[str, str]:
        """Each secret, with a name to report it by (never the secret itself)."""
        named: dict[str, str] = {}
        for kind, values in (
            ("password", self.passwords),
            ("password digest", self.digests),
            ("token", self.tokens),
            ("refresh token", self.refresh_tokens),
        ):
            for i, value in enumerate(sorted(values)):
                named[value] = f"{kind} #{i + 1}"
        return named

    def learn(self, body: bytes) -> None:
        """Take the tokens out of an answer of the API."""
        try:
            data = json.loads(body).get("data")
        except (ValueError, AttributeError):
            return
        if isinstance(data, dict):
            if isinstance(data.get("token"), str):
                self.tokens.add(data["token"])
            if isinstance(data.get("refresh_token"), str):
                self.refresh_tokens.add(data["refresh_token"])


def leaks(texts: Iterable[tuple[str, str]], secrets: dict[str, str]) -> list[str]:
    """``where: which secret`` for every secret found in a text."""
    found = []
    for where, text in texts:
        for secret, name in secrets.items():
            if secret and secret in text:
                found.append(f"{name} in {where}")
    return found


def exception_texts(error: BaseException, where: str) -> list[tuple[str, str]]:
    """What a user can see of an error: str, repr, args, the whole chained traceback."""
    texts = [
        (f"{where} str", str(error)),
        (f"{where} repr", repr(error)),
        (f"{where} args", repr(error.args)),
        (f"{where} traceback", "".join(traceback.format_exception(error))),
    ]
    for name in ("message", "status_code", "error_code", "retry_after"):
        texts.append((f"{where}.{name}", repr(getattr(error, name, None))))
    return texts


def log_texts(records: Iterable[logging.LogRecord]) -> list[tuple[str, str]]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [
        (f"log {r.name}:{r.levelname} {r.msg!r}", formatter.format(r) + repr(r.args))
        for r in records
    ]


# -- the wire ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    method: str
    url: httpx.URL
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def origin(self) -> tuple[str, str, int | None]:
        port = self.url.port or {"https": 443, "http": 80}.get(self.url.scheme)
        return (self.url.scheme, self.url.host, port)


class Recorder(httpx.AsyncBaseTransport):
    """Records every request, learns every secret in every answer.

    Indigo's hosts are answered by the emulator; ``/redirect-away`` on them answers a
    307 to another host; any other host answers 200 with nothing.
    """

    def __init__(self, emu: IndigoEmulator, secrets: Secrets) -> None:
        self.inner = emu.transport()
        self.secrets = secrets
        self.sent: list[Sent] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.sent.append(Sent(request.method, request.url, list(request.headers.items()), body))
        indigo = request.url.host in ("api.indigobrowser.com", "launcher.indigobrowser.com")
        if not indigo:
            return httpx.Response(200, json={"seen": True})
        if request.url.path == "/redirect-away":
            return httpx.Response(307, headers={"Location": "https://collector.example.net/x"})
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        self.secrets.learn(content)
        return httpx.Response(response.status_code, headers=response.headers, content=content)


@pytest.fixture
def emu() -> IndigoEmulator:
    return IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)


async def test_each_secret_travels_only_where_it_must(emu: IndigoEmulator) -> None:
    secrets = Secrets()
    recorder = Recorder(emu, secrets)
    async with httpx.AsyncClient(transport=recorder) as http:
        manager = AsyncTokenManager(EMAIL, PASSWORD, http_client=http, max_retry_delay=0)
        await manager.get_token()
        await manager.get_token(force_refresh=True)
        await manager.automation_token("1h")
        await manager.workspaces()
        async with httpx.AsyncClient(
            transport=recorder, auth=manager, follow_redirects=True
        ) as client:
            for url in (
                f"{API}/workspace/folders",
                f"{LAUNCHER}/api/v2/profile",
                f"{API}/redirect-away",  # 307 to another host
                "https://example.org/collect",
                "https://api.indigobrowser.com.evil.test/",
                "https://api.indigobrowser.com:8443/",
                "http://api.indigobrowser.com/plain",
            ):
                await client.post(url, json={"hello": "world"})
            emu.revoke_all(EMAIL)  # the next request meets a 401 and re-authenticates
            assert (await client.get(f"{API}/workspace/folders")).status_code == 200
        await manager.revoke()
    assert secrets.tokens and secrets.refresh_tokens
    tokens = secrets.tokens
    digest = md5_hex(PASSWORD)

    assert any(s.url.host == "collector.example.net" for s in recorder.sent)
    for sent in recorder.sent:
        where = f"{sent.method} {sent.url}"
        url = str(sent.url)
        for secret in secrets.all():
            assert secret not in url, f"a secret in the URL of {where}"
        # Headers: a token only as the bearer, only to the Indigo hosts.
        for name, value in sent.headers:
            for secret in (*tokens, *secrets.refresh_tokens, *secrets.passwords, digest):
                if secret in value:
                    assert name.lower() == "authorization", f"a secret in {name} of {where}"
                    assert value == f"Bearer {secret}", where
                    assert secret in tokens, f"a non-token secret as the bearer of {where}"
                    assert sent.origin in ALLOWED, f"the bearer went to {where}"
        if sent.origin not in ALLOWED:
            assert not any(n.lower() == "authorization" for n, _ in sent.headers), where
        # Bodies: the digest only to sign-in, the refresh token only to refresh.
        text = sent.body.decode("latin-1")
        for token in tokens:
            assert token not in text, f"a token in the body of {where}"
        for password in secrets.passwords:
            assert password not in text, f"the password in {where}"
        api = sent.origin == ("https", "api.indigobrowser.com", 443)
        signin = api and sent.url.path == "/user/signin"
        refresh = api and sent.url.path == "/user/refresh_token"
        assert (digest in text) == (signin and sent.method == "POST"), where
        if any(r in text for r in secrets.refresh_tokens):
            assert refresh and sent.method == "POST", f"the refresh token in {where}"
        if signin or refresh:
            assert not any(n.lower() == "authorization" for n, _ in sent.headers), where


# -- TLS and plain http -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://api.indigobrowser.com",
        "http://10.1.2.3:8080",
        "http://0.0.0.0:8000",
        "http://localhost.evil.test",
        "http://127.0.0.1.nip.io",
        "http://127.0.0.1@evil.test",
        "ftp://127.0.0.1",
        "https://user:secret@api.indigobrowser.com",
    ],
)
def test_insecure_or_odd_base_url_is_refused(url: str) -> None:
    refused = "plain http|credentials|http\\(s\\) URL"
    with pytest.raises(ValueError, match=refused) as caught:
        AsyncTokenManager(EMAIL, PASSWORD, base_url=url)
    assert "secret" not in str(caught.value)
    with pytest.raises(ValueError, match=refused):
        AsyncTokenManager(EMAIL, PASSWORD, launcher_url=url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://localhost:8000/", "http://localhost:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("https://api.indigobrowser.com/", API),
        ("api.indigobrowser.com", API),  # as the vendor's sample writes it
    ],
)
def test_loopback_and_https_base_urls_are_taken(url: str, expected: str) -> None:
    assert AsyncTokenManager(EMAIL, PASSWORD, base_url=url).base_url == expected


def test_plain_http_elsewhere_needs_an_explicit_opt_in() -> None:
    with pytest.raises(ValueError, match="allow_insecure"):
        normalize_base_url("http://indigo.internal")
    manager = AsyncTokenManager(
        EMAIL, PASSWORD, base_url="http://indigo.internal:8080", allow_insecure=True
    )
    assert manager.base_url == "http://indigo.internal:8080"


@dataclass
class TLSServer:
    url: str
    requests: list[str]
    cafile: Path


@pytest.fixture
def tls_server(tmp_path: Path, emu: IndigoEmulator) -> Iterator[TLSServer]:
    """An HTTPS server on loopback with a self-signed certificate; it answers a sign-in."""
    crypto = pytest.importorskip("cryptography", reason="cryptography makes the certificate")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    del crypto
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    requests: list[str] = []
    answer = json.dumps(
        {
            "status": {"error_code": "", "http_code": 200, "message": "Successful signin"},
            "data": {"token": emu.issue_token(EMAIL), "refresh_token": "r"},
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return None

        def do_POST(self) -> None:
            requests.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            return None  # the refused handshakes are the point

    httpd = Server(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield TLSServer(f"https://127.0.0.1:{httpd.server_address[1]}", requests, certfile)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def test_tls_verification_stays_on(tls_server: TLSServer) -> None:
    manager = AsyncTokenManager(
        EMAIL, PASSWORD, base_url=tls_server.url, max_attempts=2, max_retry_delay=0
    )
    with anyio.fail_after(20), pytest.raises(IndigoAuthError) as refused:
        await manager.get_token()
    await manager.aclose()
    assert "connection failed" in str(refused.value)
    assert tls_server.requests == []  # nothing was sent: not the digest, not the email
    # The server works for a client that trusts its certificate: the refusal was TLS's.
    trusting = ssl.create_default_context(cafile=str(tls_server.cafile))
    async with httpx.AsyncClient(verify=trusting) as http:
        trusted = AsyncTokenManager(EMAIL, PASSWORD, base_url=tls_server.url, http_client=http)
        assert await trusted.get_token()
    assert tls_server.requests == ["/user/signin"]


# -- stored state ----------------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


async def exercise_store(emu: IndigoEmulator, store: TokenStore, secrets: Secrets) -> None:
    """Sign in, refresh, fetch the rest, through ``store``; learn every secret seen."""
    async with httpx.AsyncClient(transport=Recorder(emu, secrets)) as http:
        manager = AsyncTokenManager(
            EMAIL, PASSWORD, http_client=http, store=store, max_retry_delay=0
        )
        await manager.get_token()
        await manager.get_token(force_refresh=True)
        await manager.automation_token("1h")
        await manager.workspaces()
        # Another manager on the store with a wrong password: the refresh token is dead,
        # so it signs in, and fails.
        emu.revoke_all(EMAIL)
        bad = AsyncTokenManager(EMAIL, WRONG, http_client=http, store=store)
        with pytest.raises(InvalidCredentialsError):
            await bad.get_token(force_refresh=True)


async def test_file_store_files_are_private_and_hold_no_password(
    emu: IndigoEmulator, tmp_path: Path
) -> None:
    secrets = Secrets()
    directory = tmp_path / "cache" / "indigo-auth"
    with umask(0):  # the most permissive umask: the store's own modes must hold
        store = FileStore(directory / "tokens.json")
        await exercise_store(emu, store, secrets)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = files_under(directory)
    assert directory / "tokens.json" in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    by_name = secrets.all()
    never = {s: n for s, n in by_name.items() if "password" in n}
    texts = [(f"file {p.name}", p.read_bytes().decode("latin-1")) for p in files]
    assert leaks(texts, never) == []
    # Only the token file holds tokens; lock files hold nothing secret.
    locks = [t for t in texts if t[0] != "file tokens.json"]
    assert leaks(locks, by_name) == []
    assert leaks([("repr", repr(store))], by_name) == []


async def test_file_store_file_is_private_in_a_shared_directory(
    emu: IndigoEmulator, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with umask(0):
        await exercise_store(emu, FileStore(shared / "tokens.json"), Secrets())
    for path in files_under(shared):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


async def test_memory_store_holds_no_password(emu: IndigoEmulator) -> None:
    secrets = Secrets()
    store = MemoryStore()
    await exercise_store(emu, store, secrets)
    held = [(f"state {k}", repr(v.to_dict())) for k, v in store._states.items()]
    held += [("keys", repr(list(store._states))), ("repr", repr(store))]
    assert leaks(held, {s: n for s, n in secrets.all().items() if "password" in n}) == []


@pytest.mark.redis
async def test_redis_store_holds_no_password(
    emu: IndigoEmulator, redis_url: str, redis_prefix: str
) -> None:
    redis = pytest.importorskip("redis")
    from indigo_auth import RedisStore

    secrets = Secrets()
    store = RedisStore(redis_url, key_prefix=redis_prefix)
    try:
        await exercise_store(emu, store, secrets)
    finally:
        await store.aclose()
    client = redis.Redis.from_url(redis_url)
    try:
        held = []
        for key in client.scan_iter(match=f"{redis_prefix}*"):
            value = client.dump(key) or b""
            held.append((f"redis key {key!r}", key.decode("latin-1")))
            held.append((f"redis value {key!r}", value.decode("latin-1")))
    finally:
        client.close()
    assert held, "the store wrote nothing to scan"
    assert leaks(held, {s: n for s, n in secrets.all().items() if "password" in n}) == []
    assert leaks([("repr", repr(store))], secrets.all()) == []


# -- everything observable ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def manager_on(
    emu: IndigoEmulator, secrets: Secrets, password: str = PASSWORD, **settings: object
) -> AsyncIterator[AsyncTokenManager]:
    options: dict[str, object] = {"max_retry_delay": 0, "max_attempts": 2}
    options.update(settings)
    async with httpx.AsyncClient(transport=Recorder(emu, secrets)) as http:
        manager = AsyncTokenManager(
            EMAIL,
            password,
            http_client=http,
            **options,  # type: ignore[arg-type]
        )
        yield manager


async def test_no_secret_in_logs_reprs_errors_or_stats(
    emu: IndigoEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: indigo_auth, httpx, httpcore, ...
    secrets = Secrets()
    texts: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    async def attempt(what: str, call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
        except IndigoAuthError as exc:
            errors.append(exc)
            texts.extend(exception_texts(exc, what))

    async with manager_on(emu, secrets) as manager:
        texts += [("repr(manager)", repr(manager)), ("str(manager)", str(manager))]
        await manager.get_token()
        await manager.get_token(force_refresh=True)
        await manager.automation_token("1h")
        await manager.automation_token("no_exp")
        await manager.workspaces()
        assert manager._token is not None
        texts += [
            ("repr(token)", repr(manager._token)),
            ("repr(state)", repr(manager._token.state)),
            ("repr(stats)", repr(manager.stats)),
            ("str(stats)", str(manager.stats)),
        ]
        for period, held in manager._automation.items():
            texts.append((f"repr(automation {period})", repr(held)))
        # Faults of every kind, on every endpoint: their errors and logs.
        for endpoint, fault in (
            ("refresh_token", Fault.status(503)),
            ("refresh_token", Fault.status(401)),
            ("automation_token", Fault.status(429, retry_after=0)),
            ("workspaces", Fault.status(401)),
            ("workspaces", Fault.truncated()),
            ("revoke_tokens", Fault.html()),
            ("automation_token", Fault.drop_before()),
            ("workspaces", Fault.error_in_200(403)),
        ):
            emu.inject(endpoint, fault)
            call = {
                "refresh_token": lambda: manager.get_token(force_refresh=True),
                "automation_token": lambda: manager.automation_token("3h"),
                "workspaces": manager.workspaces,
                "revoke_tokens": manager.revoke,
            }[endpoint]
            await attempt(f"{endpoint} {fault.kind}", call)
            emu.clear_faults()
        emu.revoke_all(EMAIL)  # the refresh is refused; the sign-in behind it is garbled
        emu.inject("signin", Fault.wrong_shape(), times=1)
        await attempt("garbled sign-in", lambda: manager.get_token(force_refresh=True))
        await manager.revoke()
        texts.append(("repr(stats) at the end", repr(manager.stats)))

    async with manager_on(emu, secrets, password=WRONG) as wrong:
        await attempt("wrong password", wrong.get_token)
        await attempt("wrong password again", wrong.get_token)
        texts.append(("repr(wrong manager)", repr(wrong)))

    assert len(errors) >= 10
    assert secrets.tokens and secrets.refresh_tokens
    texts += log_texts(caplog.records)
    assert any(r.name == "indigo_auth" for r in caplog.records)
    assert leaks(texts, secrets.all()) == []


# -- the command line -----------------------------------------------------------------------------


def _cli() -> Callable[[list[str]], int]:
    try:
        from indigo_auth._cli import main
    except ImportError as exc:  # pragma: no cover - the CLI is being finished elsewhere
        pytest.skip(f"the CLI is not importable yet: {exc}")
    return main


@pytest.fixture
def served() -> Iterator[tuple[IndigoEmulator, str]]:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    with emu.serve_in_thread() as url:
        yield emu, url


def test_cli_prints_only_the_token_asked_for(
    served: tuple[IndigoEmulator, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    main = _cli()
    emu, url = served
    cache = tmp_path / "cli" / "tokens.json"
    monkeypatch.setenv("INDIGO_EMAIL", EMAIL)
    monkeypatch.setenv("INDIGO_PASSWORD", PASSWORD)
    monkeypatch.delenv("INDIGO_PASSWORD_MD5", raising=False)
    monkeypatch.delenv("INDIGO_WORKSPACE_ID", raising=False)
    caplog.set_level(logging.DEBUG)
    common = ["--api-url", url, "--cache", str(cache), "--max-attempts", "2"]
    secrets = Secrets()
    texts: list[tuple[str, str]] = []

    def run(argv: list[str], code: int = 0, *, prints_token: bool = False) -> None:
        name = " ".join(a for a in argv if a not in common)
        assert main(argv) == code, name
        out, err = capsys.readouterr()
        texts.append((f"stderr of {name}", err))
        if prints_token:
            # The one secret a command may show: the token the user asked it to print.
            token = out.strip()
            assert out == f"{token}\n", f"{name} printed more than the token"
            assert emu.decode(token)
            secrets.tokens.add(token)
            out = out.replace(token, "")
        texts.append((f"stdout of {name}", out))
        if cache.exists():
            for entry in json.loads(cache.read_text())["tokens"].values():
                secrets.tokens.add(entry["token"])
                if entry.get("refresh_token"):
                    secrets.refresh_tokens.add(entry["refresh_token"])

    for verbose in ([], ["-v"]):
        run(["token", *verbose, *common], prints_token=True)
        run(["token", *verbose, *common], prints_token=True)  # from the cache
        run(["token", "--force-refresh", *verbose, *common], prints_token=True)
        run(["automation-token", "--period", "1h", *verbose, *common], prints_token=True)
        run(["workspaces", *verbose, *common])
        run(["workspaces", "--json", *verbose, *common])
        run(["revoke", *verbose, *common])
    monkeypatch.setenv("INDIGO_PASSWORD", WRONG)
    run(["token", "--force-refresh", "-v", *common], code=3)
    run(["token", "--force-refresh", *common], code=3)
    emu.inject("signin", Fault.status(503))
    run(["token", "--force-refresh", "-v", *common], code=5)

    assert len(secrets.tokens) >= 6 and secrets.refresh_tokens
    texts += log_texts(caplog.records)
    assert leaks(texts, secrets.all()) == []
    # The cache holds tokens, as it must, and never the password or its digest.
    passwords = {s: n for s, n in secrets.all().items() if "password" in n}
    for path in files_under(cache.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert leaks([(path.name, path.read_text(errors="replace"))], passwords) == []


# -- the static checks ------------------------------------------------------------------------


def test_the_security_lint_stays_on() -> None:
    # ./scripts/test runs ruff over src and tests: its S (bandit) rules must be selected.
    tomllib = pytest.importorskip("tomllib", reason="tomllib arrived in Python 3.11")
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    lint = tomllib.loads(pyproject.read_text())["tool"]["ruff"]["lint"]
    assert "S" in lint["select"]
    assert not {"S", "S1", "S3", "S5"} & set(lint.get("ignore", []))
