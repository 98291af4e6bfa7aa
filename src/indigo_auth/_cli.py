"""The ``indigo-auth`` command line: a token for shell scripts, and the emulator.

``indigo-auth token`` prints a valid token and nothing else on stdout. Tokens are
cached in a :class:`FileStore`, so a shell loop around ``$(indigo-auth token)``
signs in once per token lifetime, not once per call. Credentials come from the
environment, from stdin (``--password-stdin``) or from a prompt without echo,
never from a flag value. Errors are one line on stderr with a distinct exit code.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio

from ._api import AUTOMATION_PERIODS, DEFAULT_BASE_URL, normalize_base_url
from ._exceptions import (
    IndigoAPIError,
    IndigoAuthError,
    IndigoProtocolError,
    IndigoUnavailableError,
    InvalidCredentialsError,
    RateLimitedError,
)
from ._manager import AsyncTokenManager
from ._stores import FileStore, MemoryStore, TokenStore, default_cache_dir, store_key
from ._token import Token

__all__ = [
    "EXIT_API_ERROR",
    "EXIT_CREDENTIALS",
    "EXIT_OK",
    "EXIT_PROTOCOL",
    "EXIT_RATE_LIMITED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
#: Any other error the API reported (say, a plan without automation), or a bug.
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_CREDENTIALS = 3
EXIT_RATE_LIMITED = 4
EXIT_UNAVAILABLE = 5
EXIT_PROTOCOL = 6
_EXIT_INTERRUPTED = 130
#: A cached token is printed only while it has this long to live (or half its lifetime).
_REFRESH_MARGIN = 300.0

_PROG = "indigo-auth"
_EPILOG = """\
credentials:
  INDIGO_EMAIL (or --email), and INDIGO_PASSWORD or INDIGO_PASSWORD_MD5; else the
  password is read from stdin with --password-stdin, or asked for without echo when
  stdin is a terminal. A password is never taken from a flag.
  INDIGO_API_URL (or --api-url) sets the API, INDIGO_WORKSPACE_ID (or --workspace-id)
  the workspace.

exit codes:
  0  success
  1  any other error the API reported (for example: no automation on this plan)
  2  usage: a wrong option, missing credentials
  3  credentials refused
  4  rate limited
  5  API unreachable or failing
  6  unexpected answer from the API
"""


class _UsageError(Exception):
    """Wrong or missing input: exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, minus echoing what it did not understand: that may be a password."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: ``--password=...`` must not pass for ``--password-stdin``.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            words = message[len(prefix) :].split()
            names = [word.partition("=")[0] for word in words if word.startswith("-")]
            message = "unrecognized arguments" + (f": {' '.join(names)}" if names else "")
        elif "ignored explicit argument" in message:
            message = message.partition(": ignored explicit argument")[0] + ": takes no value"
        super().error(message)


# -- the parser --------------------------------------------------------------------------


def _api_options() -> argparse.ArgumentParser:
    options = _Parser(add_help=False)
    group = options.add_argument_group("API and account")
    group.add_argument(
        "--api-url",
        metavar="URL",
        help=f"the API's base URL (INDIGO_API_URL, else {DEFAULT_BASE_URL})",
    )
    group.add_argument("--email", help="the account's email (INDIGO_EMAIL)")
    group.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin",
    )
    group.add_argument(
        "--workspace-id", metavar="ID", help="switch into this workspace (INDIGO_WORKSPACE_ID)"
    )
    group.add_argument(
        "--cache",
        metavar="PATH",
        type=Path,
        help=f"the token cache file ({default_cache_dir() / 'tokens.json'})",
    )
    group.add_argument(
        "--no-cache", action="store_true", help="neither read nor write the token cache"
    )
    group.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="per request (10)"
    )
    group.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        metavar="N",
        help="attempts before a transient failure is reported (5)",
    )
    _verbose_option(options)
    return options


def _verbose_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's default must not overwrite a --verbose given before it.
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log what happens, and show a traceback on errors",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_PROG,
        description="Keep a valid Indigo API token at hand for shell scripts.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _verbose_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    api = _api_options()

    def add(name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )

    token = add(
        "token",
        "print a valid token, reusing the cached one while it is fresh",
        parents=[api],
    )
    token.add_argument(
        "--force-refresh", action="store_true", help="renew even if the cached token is fresh"
    )
    token.set_defaults(handler=_token)

    automation = add("automation-token", "print an automation token", parents=[api])
    automation.add_argument(
        "--period",
        default="24h",
        choices=AUTOMATION_PERIODS,
        help="how long the token lives (24h)",
    )
    automation.set_defaults(handler=_automation_token)

    workspaces = add("workspaces", "list the account's workspaces", parents=[api])
    workspaces.add_argument("--json", action="store_true", help="print JSON instead of a table")
    workspaces.set_defaults(handler=_workspaces)

    revoke = add("revoke", "revoke every token of the account", parents=[api])
    revoke.set_defaults(handler=_revoke)

    emulator = add("emulator", "serve the Indigo API emulator on a loopback port")
    emulator.add_argument("--host", default="127.0.0.1", help="a loopback address (127.0.0.1)")
    emulator.add_argument("--port", type=int, default=8000, help="(8000)")
    emulator.add_argument(
        "--token-lifetime",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="how long a token lives (1800, as Indigo's)",
    )
    emulator.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="EMAIL:PASSWORD",
        help="an account of the emulator; repeatable (default: INDIGO_EMAIL, INDIGO_PASSWORD)",
    )
    emulator.add_argument(
        "--rate-limit",
        type=int,
        default=50,
        metavar="N",
        help="requests a minute per account (50, as Indigo's); 0 for no limit",
    )
    _verbose_option(emulator)
    emulator.set_defaults(handler=_emulator)

    # The demo's own options are added only when it runs (see main).
    demo = add(
        "demo",
        "run many concurrent bots through one manager on the embedded emulator "
        "(indigo-auth demo --help)",
        add_help=False,
    )
    demo.set_defaults(handler=_demo)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


# -- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see ``indigo-auth --help``)."""
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command == "demo":
            args = _parse_demo(extra, args)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE, verbose=False)
    verbose = bool(getattr(args, "verbose", False))
    library_logger = logging.getLogger("indigo_auth")
    saved_level = library_logger.level
    handler: logging.Handler | None = None
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{_PROG}: %(levelname)s %(message)s"))
        library_logger.addHandler(handler)
        library_logger.setLevel(logging.DEBUG)
    else:
        # One line per error: the retries' warnings stay out of stderr.
        library_logger.setLevel(logging.CRITICAL + 1)
    try:
        code: int = args.handler(args)
        return code
    except KeyboardInterrupt:
        return _fail("interrupted", _EXIT_INTERRUPTED, verbose)
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more to say to it.
        _silence_stdout()
        return EXIT_API_ERROR
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE, verbose)
    except ValueError as exc:  # a setting the manager refuses: a bad URL, a bad digest
        return _fail(str(exc), EXIT_USAGE, verbose)
    except IndigoAuthError as exc:
        return _fail(str(exc), _exit_code(exc), verbose)
    except OSError as exc:
        return _fail(f"{type(exc).__name__}: {exc.strerror or exc}", EXIT_API_ERROR, verbose)
    except Exception as exc:
        return _fail(
            f"internal error ({type(exc).__name__}); run with --verbose for details",
            EXIT_API_ERROR,
            verbose,
        )
    finally:
        library_logger.setLevel(saved_level)
        if handler is not None:
            library_logger.removeHandler(handler)


def _exit_code(error: IndigoAuthError) -> int:
    if isinstance(error, InvalidCredentialsError):
        return EXIT_CREDENTIALS
    if isinstance(error, RateLimitedError):
        return EXIT_RATE_LIMITED
    if isinstance(error, IndigoUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(error, IndigoProtocolError):
        return EXIT_PROTOCOL
    if isinstance(error, IndigoAPIError):
        return EXIT_API_ERROR
    return EXIT_API_ERROR


def _fail(message: str, code: int, verbose: bool) -> int:
    if verbose:
        import traceback

        traceback.print_exc(file=sys.stderr)
    line = " ".join(message.split())
    sys.stderr.write(f"{_PROG}: error: {line}\n")
    sys.stderr.flush()
    return code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _parse_demo(extra: list[str], args: argparse.Namespace) -> argparse.Namespace:
    demo = _demo_module()
    parser = _Parser(
        prog=f"{_PROG} demo",
        description="Many concurrent bot tasks through one token manager, on the "
        "embedded emulator; ends with a report.",
    )
    demo.add_demo_arguments(parser)
    return parser.parse_args(extra, namespace=args)


def _demo_module() -> Any:
    try:
        from . import _demo
    except ImportError:
        raise _UsageError("the demo is not part of this installation") from None
    return _demo


# -- credentials -------------------------------------------------------------------------


def _email(args: argparse.Namespace) -> str:
    email = (args.email or os.environ.get("INDIGO_EMAIL", "")).strip()
    if not email and _interactive():
        email = _ask("Indigo email: ").strip()
    if not email:
        raise _UsageError("no email: set INDIGO_EMAIL or pass --email")
    return email


def _password(args: argparse.Namespace, email: str) -> tuple[str | None, str | None]:
    """``(password, None)`` or ``(None, password_md5)``, from where the user put it."""
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise _UsageError("--password-stdin: no password on stdin")
        return line, None
    if os.environ.get("INDIGO_PASSWORD"):
        return os.environ["INDIGO_PASSWORD"], None
    if os.environ.get("INDIGO_PASSWORD_MD5"):
        return None, os.environ["INDIGO_PASSWORD_MD5"]
    if _interactive():
        password = getpass.getpass(f"Indigo password for {email}: ")
        if not password:
            raise _UsageError("no password given")
        return password, None
    raise _UsageError(
        "no password: set INDIGO_PASSWORD or INDIGO_PASSWORD_MD5, pass --password-stdin, "
        "or run on a terminal to be asked"
    )


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _ask(prompt: str, stream: TextIO | None = None) -> str:
    # The prompt goes to stderr: stdout carries only the answer (``$(indigo-auth token)``).
    err = stream or sys.stderr
    err.write(prompt)
    err.flush()
    return sys.stdin.readline().rstrip("\r\n")


def _base_url(args: argparse.Namespace) -> str:
    return normalize_base_url(args.api_url or os.environ.get("INDIGO_API_URL") or DEFAULT_BASE_URL)


def _workspace_id(args: argparse.Namespace) -> str | None:
    return args.workspace_id or os.environ.get("INDIGO_WORKSPACE_ID") or None


def _store(args: argparse.Namespace) -> TokenStore:
    if args.no_cache:
        return MemoryStore()
    return FileStore(args.cache) if args.cache is not None else FileStore.default()


def _check_limits(args: argparse.Namespace) -> None:
    if args.timeout <= 0:
        raise _UsageError("--timeout must be > 0")
    if args.max_attempts < 1:
        raise _UsageError("--max-attempts must be >= 1")


# -- the API commands --------------------------------------------------------------------


def _run_with_manager(
    args: argparse.Namespace,
    action: Callable[[AsyncTokenManager], Awaitable[int]],
    *,
    cached: Callable[[TokenStore, str, str], Awaitable[int | None]] | None = None,
) -> int:
    """Run ``action`` with a manager on the cache; ``cached`` may answer without one."""
    _check_limits(args)
    email = _email(args)
    base_url = _base_url(args)
    store = _store(args)

    async def run() -> int:
        try:
            if cached is not None:
                code = await cached(store, base_url, email)
                if code is not None:
                    return code
            # Asked for only now: a fresh cached token needs no password.
            password, password_md5 = _password(args, email)
            manager = AsyncTokenManager(
                email,
                password,
                password_md5=password_md5,
                base_url=base_url,
                workspace_id=_workspace_id(args),
                store=store,
                timeout=args.timeout,
                max_attempts=args.max_attempts,
            )
            del password, password_md5
            try:
                return await action(manager)
            finally:
                with anyio.CancelScope(shield=True):
                    await manager.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await store.aclose()

    return anyio.run(run)


def _token(args: argparse.Namespace) -> int:
    async def cached(store: TokenStore, base_url: str, email: str) -> int | None:
        if args.force_refresh:
            return None
        token = await _cached_token(store, base_url, email, _workspace_id(args))
        if token is None:
            return None
        _out(token)
        return EXIT_OK

    async def action(manager: AsyncTokenManager) -> int:
        token = await manager.get_token()
        if args.force_refresh and manager.stats.adopted:
            # That one came from the cache: replace it.
            token = await manager.get_token(force_refresh=True)
        _out(token)
        return EXIT_OK

    return _run_with_manager(args, action, cached=cached)


async def _cached_token(
    store: TokenStore, base_url: str, email: str, workspace_id: str | None
) -> str | None:
    """The cached token if it is as fresh as a manager would want it, else ``None``."""
    state = await store.load(store_key(base_url, email, workspace_id))
    if state is None:
        return None
    now = time.monotonic()
    token = Token.from_state(
        state,
        refresh_margin=_REFRESH_MARGIN,
        monotonic_now=now,
        rng=random.Random(),  # noqa: S311 - jitter, not cryptography
    )
    return token.value if now < token.refresh_at else None


def _automation_token(args: argparse.Namespace) -> int:
    async def action(manager: AsyncTokenManager) -> int:
        _out(await manager.automation_token(args.period))
        return EXIT_OK

    return _run_with_manager(args, action)


def _workspaces(args: argparse.Namespace) -> int:
    async def action(manager: AsyncTokenManager) -> int:
        listed = await manager.workspaces()
        if args.json:
            rows = [
                {"workspace_id": w.workspace_id, "name": w.name, "role": w.role} for w in listed
            ]
            _out(json.dumps(rows, indent=2, ensure_ascii=False))
            return EXIT_OK
        table = [("WORKSPACE ID", "NAME", "ROLE")]
        table += [(w.workspace_id, w.name, w.role) for w in listed]
        widths = [max(len(row[i]) for row in table) for i in range(2)]
        for row in table:
            _out(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip())
        return EXIT_OK

    return _run_with_manager(args, action)


def _revoke(args: argparse.Namespace) -> int:
    async def action(manager: AsyncTokenManager) -> int:
        await manager.revoke()
        sys.stderr.write(f"{_PROG}: every token of {manager.email} is revoked\n")
        return EXIT_OK

    return _run_with_manager(args, action)


# -- the other commands ------------------------------------------------------------------


def _emulator(args: argparse.Namespace) -> int:
    accounts: dict[str, str] = {}
    for value in args.account:
        email, sep, password = value.partition(":")
        if not sep or not email.strip() or not password:
            raise _UsageError("--account takes EMAIL:PASSWORD")
        accounts[email.strip()] = password
    if not accounts:
        email = os.environ.get("INDIGO_EMAIL", "").strip()
        password = os.environ.get("INDIGO_PASSWORD", "")
        if not email or not password:
            raise _UsageError(
                "the emulator needs an account: --account EMAIL:PASSWORD, or set "
                "INDIGO_EMAIL and INDIGO_PASSWORD"
            )
        accounts[email] = password
    if args.token_lifetime <= 0:
        raise _UsageError("--token-lifetime must be > 0")
    if args.rate_limit < 0:
        raise _UsageError("--rate-limit must be >= 0")
    if not 0 <= args.port <= 65535:
        raise _UsageError("--port must be between 0 and 65535")
    from .testing import IndigoEmulator, run_emulator

    emulator = IndigoEmulator(
        accounts,
        token_lifetime=args.token_lifetime,
        rate_limit=args.rate_limit or None,
    )
    emails = ", ".join(sorted(accounts))
    del accounts
    host = f"[{args.host}]" if ":" in args.host else args.host
    sys.stderr.write(
        f"{_PROG}: the Indigo API emulator, for {emails}, "
        f"on http://{host}:{args.port} (export INDIGO_API_URL=http://{host}:{args.port}); "
        "Ctrl-C stops it\n"
    )
    sys.stderr.flush()
    try:
        run_emulator(emulator, args.host, args.port)
    except ImportError as exc:
        raise _UsageError(str(exc)) from None
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the emulator is meant to stop
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    code: int = _demo_module().run_demo(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
