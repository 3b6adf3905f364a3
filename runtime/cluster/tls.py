"""TLS for the peer link: mutual, with the operator's certificates, under the HMAC handshake.

``--peer-cert``, ``--peer-key`` and ``--peer-ca`` (PEM files) give each node the certificate it
presents and the CA it checks the other node's against, both ways: a node connecting checks the
node it reaches (chain to the CA, and the certificate names the address that node advertises,
as a DNS name or an IP address in its subjectAltName: nodes addressed by IP need IP entries), and
a node accepting checks the connecting node's chain to the CA (it cannot check a name: it does
not know which node is calling until the HMAC handshake, which still runs inside TLS and proves
the cluster secret). Only this CA is trusted, never the system's; TLS 1.2 at least.

Plaintext is the operator's choice, and it is only the default where nobody else can listen:
without certificate flags a node starts only if the address it listens on and the one it
advertises are loopback, unless ``--peer-plaintext`` says the network is trusted. A flag given
alone, a file missing or unreadable, a key that is not the certificate's: refused at start, in
one line naming the flag and the file (never a key's bytes).

``tls_problem`` says in one line why a TLS handshake failed, from the ``ssl`` error trio wraps.
"""

from __future__ import annotations

import ipaddress
import ssl
from typing import Any

import attrs

from .admission import ClusterRefusal


@attrs.frozen
class PeerTLS:
    """The two contexts a node needs: to connect (``client``) and to accept (``server``)."""

    client: ssl.SSLContext
    server: ssl.SSLContext


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _readable(flag: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise ClusterRefusal(f"{flag} {path}: {reason}") from None


def _context(purpose: ssl.Purpose, cert: str, key: str, ca: str) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(purpose, cafile=ca)
    except ssl.SSLError as exc:
        raise ClusterRefusal(f"--peer-ca {ca}: not a PEM certificate ({_reason(exc)})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ClusterRefusal(f"--peer-cert {cert} with --peer-key {key}: not a PEM certificate "
                             f"and its unencrypted key ({_reason(exc)})") from None
    context.verify_mode = ssl.CERT_REQUIRED  # the server side too: mutual
    return context


def load_peer_tls(cert: str | None, key: str | None, ca: str | None, plaintext: bool,
                  hosts: list[str]) -> PeerTLS | None:
    """The contexts of the three files, or None for a plaintext link (``plaintext``, or every
    one of ``hosts``, the peer addresses listened on and advertised, loopback). Raises
    ``ClusterRefusal`` with the line to show."""
    given = {"--peer-cert": cert, "--peer-key": key, "--peer-ca": ca}
    if any(given.values()):
        if plaintext:
            raise ClusterRefusal("--peer-plaintext and --peer-cert/--peer-key/--peer-ca "
                                 "contradict each other: give one or the other")
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            raise ClusterRefusal(f"TLS on the peer link needs --peer-cert, --peer-key and "
                                 f"--peer-ca; {', '.join(missing)} missing")
        for flag, path in given.items():
            _readable(flag, path)  # type: ignore[arg-type]
        return PeerTLS(client=_context(ssl.Purpose.SERVER_AUTH, cert, key, ca),  # type: ignore
                       server=_context(ssl.Purpose.CLIENT_AUTH, cert, key, ca))  # type: ignore
    if plaintext or all(is_loopback(h) for h in hosts):
        return None
    outside = next(h for h in hosts if not is_loopback(h))
    raise ClusterRefusal(f"the peer link on {outside} is not loopback: give --peer-cert, "
                         f"--peer-key and --peer-ca (mutual TLS), or --peer-plaintext if the "
                         f"network between the nodes is trusted")


def _reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc) or type(exc).__name__


def tls_problem(exc: BaseException) -> str | None:
    """Why a TLS handshake failed, if ``exc`` (or what caused it) is an ``ssl`` error."""
    seen: Any = exc
    for _ in range(5):
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {_reason(seen)}"
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            return None
    return None
