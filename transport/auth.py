"""Token authentication of the handshake (PROTOCOL.md, "Connecting"), and the Origin check.

- The user id comes from the token's ``sub`` and nowhere else.
- ``token_of`` and ``Authenticator.verify`` read attacker bytes and raise ``AuthError``, nothing
  else (tests/transport/test_auth.py, with hypothesis). Its reason is short and never holds the
  token: it is the 401's body, and logged.
- The token's ``alg`` picks among keys of that kind only: HS256 the secret, RS256 an RSA public
  key, ES256 an EC P-256 public key. Never ``none``, never a public key's bytes used as an HMAC
  secret (the classic algorithm-confusion forgery).
- ``exp``, ``nbf`` and ``iat`` must be JSON numbers (RFC 7519 §2 NumericDate: not a numeric
  string, not a bool), each checked with ``leeway`` seconds of clock skew as JWT libraries do
  (RFC 7519 §4.1.4 allows "some small leeway"): PROTOCOL.md promises only ``exp``, so a token
  whose ``iat`` is a few seconds ahead of our clock is accepted.
- One expiry rule for the handshake, HTTP and a live connection: a token is accepted while
  ``now < exp + leeway``, and ``Identity.expires_at`` is that instant, ``exp + leeway``, at
  which the session closes the connection (4001). So a token accepted in the leeway is not
  kicked at once (and accepted again, and kicked again): it is either refused, or lives until
  the very moment it would be refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import time
from typing import Any, Sequence
from urllib.parse import unquote_plus, urlsplit

import attrs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms
from websockets.datastructures import Headers

from threadline.actors.messages import is_user_id

ALGORITHM = "HS256"  # what ``mint`` signs with
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash, 256 bits
MAX_TOKEN_CHARS = 8192  # as websockets bounds a header: PyJWT parses little, whoever calls
KNOWN_ALGORITHMS = frozenset(get_default_algorithms())
#: Tokens verified recently, kept so that a client's every HTTP request does not pay for the
#: signature again (the largest single cost of a kept-alive HTTP request, about a sixth of the
#: server's CPU: py-spy under ``bench/http.py``): at most this many, none longer than
#: ``CACHED_TOKEN_CHARS``, each only while it would verify (its ``exp`` with the leeway; the
#: keys never change while the server runs). Only tokens that verified are kept: a stranger
#: cannot fill it.
VERIFIED_TOKENS = 4096
CACHED_TOKEN_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@attrs.frozen
class Identity:
    user_id: str
    # When the token stops being accepted (seconds since the epoch): its exp plus the leeway.
    # A live connection is closed then. None: the token has no exp.
    expires_at: float | None


class AuthError(Exception):
    """The handshake is refused: the message is the answer's body, ``status`` its HTTP status
    (401, or 400 for a malformed request)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class KeyFileError(ValueError):
    """A key file that cannot be read or holds no usable public key; one line for an operator."""


# -- where the token is -------------------------------------------------------------------------

def token_of(path: str, headers: Headers) -> str | None:
    """The token of a handshake: ``Authorization: Bearer <token>``, else ``?token=<token>``;
    None if neither. Raises ``AuthError`` (400 or 401) for anything ambiguous or malformed,
    and nothing else. Never blocks."""
    # Not headers.get(): with two values it raises MultipleValuesError, a LookupError that
    # Mapping.get does not swallow (it killed the server: issue 8, item 1).
    values = headers.get_all("Authorization")
    if len(values) > 1:
        raise AuthError("more than one Authorization header", 400)
    if values:
        scheme, _, value = values[0].strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value or any(c.isspace() for c in value):
            raise AuthError("malformed token")
        return value
    # By hand rather than parse_qs: a repeated token must be seen (parse_qs keeps both), and
    # an undecodable *other* field is no reason to refuse.
    query = path.partition("?")[2].partition("#")[0]
    found = [value for name, _, value in (f.partition("=") for f in query.split("&"))
             if unquote_plus(name, errors="replace") == "token"]
    if len(found) > 1:
        raise AuthError("more than one token in the query string", 400)
    if not found:
        return None
    try:
        token = unquote_plus(found[0], errors="strict")
    except UnicodeDecodeError:
        raise AuthError("token in the query string is not UTF-8", 400) from None
    if not token:
        raise AuthError("malformed token")
    return token


# -- keys: read once at start, blocking; raise KeyFileError ---------------------------------------

def _algorithm_of(key: Any, source: str) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:  # RFC 7518 §3.3: 2048 bits or larger
            raise KeyFileError(f"{source}: RSA key of {key.key_size} bits; RS256 needs 2048+")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError(f"{source}: EC key on {key.curve.name}; ES256 needs P-256")
        return "ES256"
    raise KeyFileError(f"{source}: not an RSA or EC public key (RS256 or ES256)")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)  # key files are small
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None


def load_public_key(path: str) -> tuple[str, Any]:
    """``(algorithm, key)`` from a PEM public key or X.509 certificate."""
    data = _read(path)
    try:
        key = (x509.load_pem_x509_certificate(data).public_key() if b"CERTIFICATE-" in data
               else load_pem_public_key(data))
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM public key or certificate") from None
    return _algorithm_of(key, path), key


def load_jwks(path: str) -> list[tuple[str | None, str, Any]]:
    """``[(kid, algorithm, key)]`` from a local JWKS file ``{"keys": [...]}``."""
    try:
        keys = json.loads(_read(path))["keys"]
    except (ValueError, KeyError, TypeError):
        keys = None
    if not isinstance(keys, list) or not keys:
        raise KeyFileError(f'{path}: not a JWKS (a JSON object with a non-empty "keys" list)')
    found: list[tuple[str | None, str, Any]] = []
    for n, jwk in enumerate(keys):
        where = f"{path}: key {n}"
        if not isinstance(jwk, dict) or "d" in jwk:
            raise KeyFileError(f'{where}: give public JWKs only (no private "d")')
        kty = jwk.get("kty")
        loaders: dict[str, type[RSAAlgorithm] | type[ECAlgorithm]] = {
            "RSA": RSAAlgorithm, "EC": ECAlgorithm}
        loader = loaders.get(kty if isinstance(kty, str) else "")
        if loader is None:
            raise KeyFileError(f"{where}: kty must be RSA or EC")
        try:
            key = loader.from_jwk(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise KeyFileError(f"{where}: not a usable {kty} public key") from None
        alg, kid = _algorithm_of(key, where), jwk.get("kid")
        if jwk.get("alg", alg) != alg:
            raise KeyFileError(f"{where}: alg {jwk['alg']!r} does not fit the key ({alg})")
        if not isinstance(kid, (str, type(None))) or kid in [k for k, _, _ in found]:
            raise KeyFileError(f"{where}: kid must be a string, unique in the set")
        found.append((kid, alg, key))
    return found


# -- verification -------------------------------------------------------------------------------

class Authenticator:
    """Verifies handshake tokens against a secret (HS256), a public key file and/or a JWKS file
    (RS256, ES256), and checks browser origins. The constructor reads the key files (blocking;
    raises ``KeyFileError``, or ``ValueError`` for a bad setting); the rest never blocks."""

    def __init__(self, *, secret: str | None = None, public_key_file: str | None = None,
                 jwks_file: str | None = None, leeway: float = 30.0,
                 allowed_origins: Sequence[str] | None = None) -> None:
        if not (secret or public_key_file or jwks_file):
            raise ValueError("an Authenticator needs a secret, a public key file or a JWKS")
        if not (math.isfinite(leeway) and leeway >= 0):
            raise ValueError(f"leeway must be a number of seconds >= 0, not {leeway!r}")
        self.leeway = leeway
        self._secret = secret.encode() if secret else None
        # (kid, algorithm, key); the PEM file's key has no kid and answers any kid.
        self._keys = load_jwks(jwks_file) if jwks_file else []
        if public_key_file:
            self._keys.append((None, *load_public_key(public_key_file)))
        self._origins = (None if allowed_origins is None
                         else {o if o == "*" else normalize_origin(o) for o in allowed_origins})
        self._verified: dict[str, Identity] = {}  # see VERIFIED_TOKENS; oldest first

    def derive_key(self, label: bytes) -> bytes | None:
        """A key for ``label`` derived from the HS256 secret (HMAC-SHA256 of the label), the
        same in every process that checks tokens with that secret; None without one (a server
        that only has public keys shares no secret with its peers)."""
        if self._secret is None:
            return None
        return hmac.new(self._secret, label, hashlib.sha256).digest()

    def _key_for(self, alg: str, kid: str | None) -> Any:
        if alg == ALGORITHM and self._secret is not None:
            return self._secret
        keys = [k for k in self._keys if k[1] == alg]
        if not keys:  # the header is the attacker's text: name only a real algorithm
            raise AuthError(f"algorithm {alg if alg in KNOWN_ALGORITHMS else '?'} not accepted")
        if kid is not None:
            keys = [k for k in keys if k[0] == kid] or [k for k in keys if k[0] is None]
            if not keys:
                raise AuthError("unknown kid")
        if len(keys) > 1:  # a set of one key of this kind needs no kid
            raise AuthError("token has no kid")
        return keys[0][2]

    def verify(self, token: str | None) -> Identity:
        """The identity a token vouches for. Raises ``AuthError`` (401), nothing else. A token
        that verified a moment ago is answered from ``VERIFIED_TOKENS`` while it is valid."""
        if token is None:
            raise AuthError("missing token")
        cached = self._verified.get(token) if isinstance(token, str) else None
        if cached is not None:
            if cached.expires_at is None or time.time() < cached.expires_at:
                return cached
            del self._verified[token]
        identity = self._verify(token)
        if len(token) <= CACHED_TOKEN_CHARS:
            if len(self._verified) >= VERIFIED_TOKENS:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = identity
        return identity

    def _verify(self, token: str) -> Identity:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
            alg, kid = header.get("alg"), header.get("kid")
            if not isinstance(alg, str) or not isinstance(kid, (str, type(None))):
                raise AuthError("malformed token")
            # The signature here; the times below, with strict types and our leeway.
            claims = jwt.decode(token, self._key_for(alg, kid), algorithms=[alg],
                                options={"require": ["sub"], "verify_exp": False,
                                         "verify_nbf": False, "verify_iat": False})
        except jwt.InvalidSignatureError:
            raise AuthError("invalid token signature") from None
        except jwt.MissingRequiredClaimError:
            raise AuthError("token has no sub claim") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience not accepted") from None
        # base64, json and cryptography under PyJWT raise their own errors on attacker bytes
        # (ValueError, TypeError; RecursionError for deeply nested JSON).
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise AuthError("malformed token") from None
        now = time.time()
        exp, nbf, iat = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
        if exp is not None and now >= exp + self.leeway:
            raise AuthError("token expired")
        if nbf is not None and now < nbf - self.leeway:
            raise AuthError("token not yet valid")
        if iat is not None and iat > now + self.leeway:
            raise AuthError("token issued in the future")
        if not is_user_id(claims["sub"]):
            raise AuthError("sub must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
        return Identity(claims["sub"], None if exp is None else exp + self.leeway)

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a handshake with this ``Origin`` (None: not a browser) and ``Host`` may go
        on. No list configured: no Origin, a loopback origin, or one whose host:port is the
        ``Host``'s. A list: exactly those origins (``"*"``: any). Never raises."""
        if origin is None or (self._origins is not None and "*" in self._origins):
            return True
        try:
            normal = normalize_origin(origin)
        except ValueError:
            return False
        if self._origins is not None:
            return normal in self._origins
        scheme, _, hostport = normal.partition("://")
        name = urlsplit(normal).hostname or ""
        if _is_loopback(name):
            return True
        return host is not None and _with_port(host.strip().lower(), scheme) == \
            _with_port(hostport, scheme)


def _number(claims: dict[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AuthError(f"{name} must be a number")
    return float(value)


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port. Raises ``ValueError``
    for anything else (a path, credentials, no host, a bad port)."""
    parts = urlsplit(origin.strip().lower().removesuffix("/"))
    port = parts.port  # raises ValueError for a bad port
    if not parts.scheme or not parts.hostname or parts.path or parts.query or parts.fragment \
            or "@" in parts.netloc:
        raise ValueError(f"an origin is scheme://host[:port], not {origin!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _with_port(hostport: str, scheme: str) -> str:
    if hostport.endswith("]") or ":" not in hostport:  # no port: the scheme's default
        return f"{hostport}:{DEFAULT_PORTS.get(scheme, 0)}"
    return hostport


def _is_loopback(name: str) -> bool:
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# -- tokens signed with the secret (tests, ``threadline token``) -------------------------------

def mint(user_id: str, secret: str, ttl: float | None = None) -> str:
    """An HS256 token for ``user_id``, valid for ``ttl`` seconds (``None``: no expiry)."""
    if not is_user_id(user_id):
        raise ValueError(f"invalid user id {user_id!r}")
    claims: dict[str, object] = {"sub": user_id, "iat": int(time.time())}
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)

