"""Checking the servers rtmpd's clients reach over TLS.

``rtmpd-push``, the gateway's upstream pulls and rtmpd's forwards and pulls
connect to other servers over ``rtmps://``, ``https://`` and ``wss://``. Each
connection checks the server's certificate the way Twisted does with
service-identity: a chain to a trusted CA (the system's roots, or only the
certificates of a ``--ca-file``), and a name matching the URL's host (its DNS
name, or its IP address). A certificate that fails either check ends the
attempt with one line saying which (:func:`certificate_failure`): not a hang,
not a list of OpenSSL error tuples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS

if TYPE_CHECKING:
    # The interface of trust roots is only in a private Twisted module; it
    # is used as a type, never at run time.
    from twisted.internet._sslverify import IOpenSSLTrustRoot as TrustRoot

__all__ = [
    "MAX_CA_FILE_BYTES",
    "TrustRoot",
    "certificate_failure",
    "client_tls",
    "https_policy",
    "load_ca_file",
]

#: Largest ``--ca-file`` read. The whole Mozilla bundle Debian ships is about
#: 220 KB; a file far past that is not a CA list, and is not read into memory.
MAX_CA_FILE_BYTES: Final = 4 * 1024 * 1024

_BEGIN: Final = b"-----BEGIN CERTIFICATE-----"
_END: Final = b"-----END CERTIFICATE-----"


def load_ca_file(path: str) -> TrustRoot:
    """The CA certificates of the PEM file ``path`` (one or more) as the only
    roots to trust; ValueError with one line if it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CA_FILE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot read the CA file {path}: {e.strerror}") from None
    if len(data) > MAX_CA_FILE_BYTES:
        raise ValueError(
            f"the CA file {path} is over MAX_CA_FILE_BYTES ({MAX_CA_FILE_BYTES}) bytes"
        )
    certificates = []
    start = data.find(_BEGIN)
    while start >= 0:
        end = data.find(_END, start)
        if end < 0:
            raise ValueError(f"the CA file {path} has a certificate with no END line")
        block = data[start : end + len(_END)]
        try:
            certificates.append(ssl.Certificate.loadPEM(block))
        except crypto.Error:
            raise ValueError(
                f"the CA file {path} holds a certificate that does not parse"
            ) from None
        start = data.find(_BEGIN, end)
    if not certificates:
        raise ValueError(f"the CA file {path} holds no PEM certificate")
    # Twisted's TLS helpers are untyped.
    trust: TrustRoot = ssl.trustRootFromCertificates(certificates)  # type: ignore[no-untyped-call]
    return trust


def client_tls(
    host: str, trust_root: TrustRoot | None = None
) -> IOpenSSLClientConnectionCreator:
    """TLS options for a connection to ``host``: the certificate must name it
    and chain to ``trust_root`` (None: the system's CAs)."""
    return ssl.optionsForClientTLS(host, trustRoot=trust_root)


def https_policy(trust_root: TrustRoot | None = None) -> IPolicyForHTTPS:
    """The same checks for twisted.web's ``Agent`` (its ``contextFactory``)."""
    policy: IPolicyForHTTPS = BrowserLikePolicyForHTTPS(  # type: ignore[no-untyped-call]
        trustRoot=trust_root
    )
    return policy


def certificate_failure(failure: Failure) -> str | None:
    """One line saying why the server's certificate did not verify, or None
    if ``failure`` is something else (other TLS errors included: a broken
    connection is worth retrying, a certificate is not). Agent's wrappers
    (``reasons`` lists) are looked into."""
    for reason in _causes(failure):
        value = reason.value
        if isinstance(value, VerificationError):
            return (
                "TLS: the server's certificate does not name the host of the URL "
                f"({_short(value)})"
            )
        if isinstance(value, SSL.Error) and "certificate verify failed" in _openssl_text(value):
            # OpenSSL says only "certificate verify failed": an unknown
            # issuer, or a certificate past its dates.
            return (
                "TLS: the server's certificate does not verify (an unknown CA, or out of "
                "date; trust a private CA with --ca-file)"
            )
    return None


def _causes(failure: Failure) -> list[Failure]:
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        out: list[Failure] = []
        for reason in reasons:
            if isinstance(reason, Failure):
                out += _causes(reason)
        return out
    return [failure]


def _openssl_text(error: SSL.Error) -> str:
    """The reasons of an OpenSSL error (its args are lists of (library,
    function, reason) tuples)."""
    parts: list[str] = []
    for arg in error.args:
        if isinstance(arg, list):
            parts += [str(item[-1]) for item in arg if isinstance(item, tuple) and item]
        else:
            parts.append(str(arg))
    return "; ".join(p for p in parts if p)


def _short(error: VerificationError) -> str:
    mismatches = getattr(error, "errors", None) or []
    names = []
    for mismatch in mismatches:
        wanted = getattr(mismatch, "mismatched_id", None)
        name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None)
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if name is not None:
            names.append(str(name))
    return f"wanted {', '.join(names)}" if names else "no matching name"
