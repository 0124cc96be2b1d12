"""``twistd filegateway``: a static file server for recordings
(``ARCHITECTURE.md`` §7).

``twistd -n filegateway --listen tcp:8082 --root ./media [--listing]``
serves the ``--root`` tree read-only with the same resource as rtmpd's web
port (:class:`rtmpd.protocols.files.RootedFile`): GET, HEAD and OPTIONS,
byte ranges, validators, open CORS, streaming MIME types; nothing outside
the root, no internal or hidden file, listings only with ``--listing``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from rtmpd._version import __version__
from rtmpd.tap import rtmpd as rtmpd_tap

log = Logger()

#: Options that mean the same as rtmpd's, with rtmpd's checks.
_SHARED = ("header-timeout", "max-header-bytes")

#: Default of ``--max-connections``: each open connection holds a socket
#: and, while a file is sent, a file descriptor; 10 000 stays well under a
#: service's usual descriptor limit (systemd's 524 288, a raised ulimit).
DEFAULT_MAX_CONNECTIONS = 10_000


def _shared(names: Sequence[str]) -> list[Sequence[Any]]:
    by_name = {entry[0]: entry for entry in rtmpd_tap.Options.optParameters}
    return [by_name[name] for name in names]


class Options(rtmpd_tap.ShortUsageOnError):
    """Command line of ``twistd filegateway``."""

    command = "filegateway"

    synopsis = "[--listen tcp:8082] [--root ./media] [--listing] [options]"
    longdesc = (
        "Serves the --root tree (rtmpd's recordings) read-only over HTTP: GET, HEAD, "
        "OPTIONS (CORS preflight), byte ranges (single, suffix and merged multiple), "
        "ETag / Last-Modified / If-None-Match / If-Range, streaming MIME types. Nothing "
        "outside the root, no dotfiles or recorder-internal files (.recording markers, "
        "*.tmp); directory listings only with --listing. --listen is a Twisted endpoint "
        "string, so ssl:8443:privateKey=key.pem:certKey=cert.pem gives HTTPS."
    )

    optParameters: list[Sequence[Any]] = [
        ["listen", None, "tcp:8082", "Listener (a Twisted endpoint string)."],
        ["root", None, "./media", "Directory to serve, read-only."],
        [
            "max-connections", None, DEFAULT_MAX_CONNECTIONS,
            "Most open connections; more are answered 503 and closed (0: no limit).",
            rtmpd_tap._limit("max-connections"),
        ],
        *_shared(_SHARED),
    ]

    optFlags: list[Sequence[Any]] = [
        [
            "listing", None,
            "List directories without an index.html (visible names only, HTML-escaped).",
        ],
    ]

    def opt_version(self) -> None:
        """Print rtmpd's version and exit."""
        print(f"filegateway (rtmpd) {__version__.public()}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        rtmpd_tap.check_endpoint("listen", str(self["listen"]))


def check_root(root: str) -> str:
    """The absolute path of ``root``, a readable directory; SystemExit with
    one line saying what is wrong otherwise."""
    path = os.path.abspath(root)
    if not os.path.exists(path):
        raise SystemExit(f"filegateway: --root {path} does not exist")
    if not os.path.isdir(path):
        raise SystemExit(f"filegateway: --root {path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise SystemExit(f"filegateway: --root {path} is not readable")
    return path


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> service.MultiService:
    """The file server's service tree: one listener."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    from rtmpd.protocols.files import RootedFile
    from rtmpd.protocols.web import make_file_site

    root = check_root(str(options["root"]))
    listing = bool(options.get("listing"))
    max_connections = int(options.get("max-connections", DEFAULT_MAX_CONNECTIONS))
    site = make_file_site(
        RootedFile(root, listing=listing, clock=reactor), reactor=reactor,
        max_connections=max_connections,
        header_timeout=float(options.get("header-timeout", 10.0)),
        max_header_bytes=int(options.get("max-header-bytes", 16384)),
    )
    description = str(options["listen"])
    top = service.MultiService()
    top.setName("filegateway")
    rtmpd_tap.add_listener(top, "listen", description, site, reactor, program="filegateway")
    log.info(
        "filegateway {version}: listen {listen}, root {root}, listing {listing}, "
        "max connections {max_connections}",
        version=__version__.public(), listen=description, root=root,
        listing="on" if listing else "off", max_connections=max_connections or "no limit",
    )
    return top
