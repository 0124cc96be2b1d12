"""``rtmpd-sign``: sign URLs for a server run with ``--sign-secret``.

::

    RTMPD_SIGN_SECRET=S rtmpd-sign [--action publish|play] [--expires-in SECONDS] URL...

Each URL, ``rtmp://host/app/stream``, ``http://host:8501/app/stream.flv``,
``ws://host:8501/app/stream.flv`` and so on, is printed on its own line with
``expires=…&sig=…`` added to its query (:func:`rtmpd.auth.signed_query`).
The app and the stream are the path's last two segments, the stream without
its ``.flv``. A ``.flv`` URL is signed for play and any other for publish,
unless ``--action`` says otherwise. An ``expires`` or ``sig`` already in a URL
is replaced, so a URL can be signed again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, NoReturn
from urllib.parse import urlsplit, urlunsplit

from rtmpd.auth import MAX_EXPIRES, signed_query
from rtmpd.errors import InvalidStreamName
from rtmpd.registry import validate_name

__all__ = ["DEFAULT_EXPIRES_IN_S", "EXIT_OK", "EXIT_USAGE", "SECRET_ENV", "main", "sign_url"]

EXIT_OK = 0
#: Bad usage: argparse's status.
EXIT_USAGE = 2

#: The environment variable that holds the secret (a command line shows in
#: ``ps`` and shell history; the environment does not).
SECRET_ENV = "RTMPD_SIGN_SECRET"

#: How long a signature lasts unless ``--expires-in`` says: one hour.
DEFAULT_EXPIRES_IN_S = 3600

SCHEMES = frozenset({"rtmp", "rtmps", "http", "https", "ws", "wss"})
FLV_SUFFIX = ".flv"

EPILOG = f"""\
example:
  export {SECRET_ENV}=s3cret
  rtmpd-sign rtmp://example.com/live/cam1 http://example.com:8501/live/cam1.flv
prints the publish URL and the play URL, each valid for an hour:
  rtmp://example.com/live/cam1?expires=1767225600&sig=943ab7c3…
  http://example.com:8501/live/cam1.flv?expires=1767225600&sig=9cbb3d73…
"""


class UsageError(Exception):
    """The command line is wrong; the message says how."""


class _Parser(argparse.ArgumentParser):
    """Raises UsageError instead of printing the usage and exiting, so that
    :func:`main` writes one line and returns."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``rtmpd-sign`` command line."""
    parser = _Parser(
        prog="rtmpd-sign",
        description="Sign rtmpd URLs (for a server run with --sign-secret).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", nargs="+", metavar="URL",
                        help="rtmp://host/APP/STREAM, http://host:port/APP/STREAM.flv, ws://…")
    parser.add_argument("--secret", help=f"the server's --sign-secret (default: ${SECRET_ENV})")
    parser.add_argument("--action", choices=("publish", "play"),
                        help="what the URL may do (default: play for .flv URLs, else publish)")
    parser.add_argument("--expires-in", type=int, default=DEFAULT_EXPIRES_IN_S,
                        metavar="SECONDS",
                        help=f"seconds the signature lasts (default: {DEFAULT_EXPIRES_IN_S})")
    return parser


def sign_url(url: str, secret: str, expires: int, action: str | None = None) -> str:
    """``url`` with ``expires=…&sig=…`` in its query (replacing any already
    there). ``action`` None picks play for ``.flv`` URLs, else publish.
    Raises UsageError for a URL that names no app and stream."""
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise UsageError(f"{url}: {e}") from None
    if parts.scheme.lower() not in SCHEMES or not parts.netloc:
        raise UsageError(f"{url}: not an rtmp://, http:// or ws:// URL")
    segments = parts.path.split("/")
    if len(segments) < 3:
        raise UsageError(f"{url}: the path must end in /APP/STREAM")
    app, stream = segments[-2], segments[-1]
    is_flv = stream.endswith(FLV_SUFFIX)
    if is_flv:
        stream = stream[: -len(FLV_SUFFIX)]
    try:
        validate_name(app, "app name")
        validate_name(stream)
    except InvalidStreamName as e:
        raise UsageError(f"{url}: {e}") from None
    if action is None:
        action = "play" if is_flv else "publish"
    kept = [p for p in parts.query.split("&")
            if p and p.partition("=")[0] not in ("expires", "sig")]
    kept.append(signed_query(secret, action, app, stream, expires))
    return urlunsplit(parts._replace(query="&".join(kept)))


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    now: Callable[[], float] = time.time,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run ``rtmpd-sign``; returns the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    env = environ if environ is not None else os.environ
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help
            return e.code if isinstance(e.code, int) else EXIT_OK
        secret = args.secret if args.secret is not None else env.get(SECRET_ENV, "")
        if not secret:
            raise UsageError(f"no secret: give --secret or set {SECRET_ENV}")
        if args.expires_in <= 0:
            raise UsageError(f"--expires-in must be more than 0 seconds, not {args.expires_in}")
        expires = int(now()) + args.expires_in
        if expires > MAX_EXPIRES:
            raise UsageError(f"--expires-in {args.expires_in} ends past the year 9999")
        lines = [sign_url(url, secret, expires, args.action) for url in args.url]
    except UsageError as e:
        err.write(f"rtmpd-sign: error: {e}\n")
        return EXIT_USAGE
    out.write("".join(line + "\n" for line in lines))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
