"""threadline.transport.auth: where the token is, what a token must be, which keys check it, which origins
may connect. Real tokens: HS256, and RS256/ES256 with keys made here by ``cryptography``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from websockets.datastructures import Headers

from threadline.transport.auth import Authenticator, AuthError, KeyFileError, mint, token_of

SECRET = "tests-only-secret-0123456789abcdef0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
REASONS = re.compile(r"missing token|malformed token|invalid token signature|token expired|"
                     r"token not yet valid|token issued in the future|token has no sub claim|"
                     r"token audience not accepted|unknown kid|token has no kid|"
                     r"(exp|nbf|iat) must be a number|sub must be .*|algorithm \S+ not accepted")


def pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(key, kid: str | None = None) -> dict:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    data = json.loads(algorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid} if kid else data


def hs256(claims: dict) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def refusal(auth: Authenticator, token) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.verify(token)
    assert info.value.status == 401
    return info.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- token_of: item 1 (two Authorization headers killed the server) ------------------------------

def test_two_authorization_headers_are_a_400_not_a_lookup_error():
    headers = Headers([("Authorization", f"Bearer {mint('ada', SECRET)}"),
                       ("authorization", "Bearer other")])
    with pytest.raises(AuthError) as info:
        token_of("/v1/ws", headers)
    assert (str(info.value), info.value.status) == ("more than one Authorization header", 400)


@pytest.mark.parametrize("target, reason, status", [
    ("/v1/ws?token=%ff%fe", "token in the query string is not UTF-8", 400),
    ("/v1/ws?token=a&token=b", "more than one token in the query string", 400),
    ("/v1/ws?token", "malformed token", 401),
    ("/v1/ws?token=", "malformed token", 401),
])
def test_a_bad_query_string_is_a_clear_refusal(target, reason, status):
    with pytest.raises(AuthError) as info:
        token_of(target, Headers())
    assert (str(info.value), info.value.status) == (reason, status)


def test_where_the_token_is():
    assert token_of("/v1/ws", Headers()) is None
    assert token_of("/v1/ws?x=%ff&token=a%2Bb.c#frag", Headers()) == "a+b.c"
    assert token_of("/v1/ws?token=q", Headers([("Authorization", "bearer  h ")])) == "h"
    for value in ("Basic YWRhOmFkYQ==", "Bearer", "Bearer a b", "tok"):
        with pytest.raises(AuthError) as info:
            token_of("/v1/ws?token=q", Headers([("Authorization", value)]))
        assert (str(info.value), info.value.status) == ("malformed token", 401)


TEXT = st.text(st.characters(codec=None, exclude_categories=()))  # surrogates too
# What a websockets Headers can hold (its http11 parser's token and value rules): a request
# cannot bring anything else.
NAMES = st.sampled_from(["Authorization", "authorization", "AUTHORIZATION", "Origin", "Host"]) \
    | st.text(st.sampled_from("-!#$%&'*+.^_`|~0123456789azAZ"), min_size=1)
VALUES = st.text(st.characters(max_codepoint=0xFF).filter(
    lambda c: c == "\t" or 0x20 <= ord(c) <= 0x7E or ord(c) >= 0x80))
TARGETS = TEXT | st.lists(st.sampled_from(
    ["token", "=", "&", "?", "#", "%", "%ff", "%fe", "%2B", "+", "a", "%", "token=", "%C3%A9",
     "%e0%80", "=="]) | TEXT, max_size=12).map(lambda parts: "/v1/ws?" + "".join(parts))


@given(st.lists(st.tuples(NAMES, st.sampled_from(["Bearer ", "bearer", "Basic ", ""])
                          .flatmap(lambda s: VALUES.map(lambda t: s + t))), max_size=5), TARGETS)
def test_token_of_returns_a_token_or_none_or_raises_auth_error(pairs, target):
    try:
        token = token_of(target, Headers(pairs))
    except AuthError as exc:
        assert exc.status in (400, 401) and len(str(exc)) < 64
    else:
        assert token is None or (isinstance(token, str) and token)


# -- verify: only AuthError, reasons without the token -------------------------------------------

AUTH = Authenticator(secret=SECRET)
JSONS = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                     lambda inner: st.lists(inner) | st.dictionaries(TEXT, inner), max_leaves=8)
CLAIMS = st.fixed_dictionaries({}, optional={
    "sub": JSONS | st.just("ada"), "exp": JSONS, "iat": JSONS, "nbf": JSONS, "aud": JSONS})
PARTS = (JSONS.map(lambda v: b64(json.dumps(v).encode()))
         | st.binary().map(b64) | TEXT)


@given(TEXT | st.binary() | st.lists(PARTS, min_size=1, max_size=4).map(".".join)
       | st.builds(lambda h, p, s: f"{b64(json.dumps(h).encode())}.{p}.{s}",
                   st.fixed_dictionaries({"alg": st.sampled_from(["HS256", "none", "RS256"])
                                          | TEXT}, optional={"kid": JSONS}), PARTS, PARTS))
def test_verify_of_anything_raises_only_auth_error(token):
    with pytest.raises(AuthError) as info:
        AUTH.verify(token)
    assert REASONS.fullmatch(str(info.value)), str(info.value)


@given(CLAIMS)
def test_signed_claims_are_an_identity_or_auth_error(claims):
    token = hs256(claims)
    try:
        identity = AUTH.verify(token)
    except AuthError as exc:
        assert REASONS.fullmatch(str(exc)) and token not in str(exc)
    else:  # any sub that is a user id (hypothesis found "0"), not only "ada"
        assert identity.user_id == claims["sub"]


def test_deeply_nested_json_is_malformed_not_a_recursion_error():
    header = b64(b"[" * 5000 + b"]" * 5000)
    assert str(refusal(AUTH, f"{header}.{b64(b'{}')}.x")) == "malformed token"


# -- item 10: leeway for iat/nbf/exp, numbers only -----------------------------------------------

def test_a_token_issued_a_few_seconds_in_the_future_is_accepted():
    now = int(time.time())
    assert AUTH.verify(hs256({"sub": "ada", "iat": now + 5})).user_id == "ada"
    assert AUTH.verify(hs256({"sub": "ada", "nbf": now + 5})).user_id == "ada"
    assert str(refusal(AUTH, hs256({"sub": "ada", "iat": now + 600}))) == \
        "token issued in the future"
    assert str(refusal(AUTH, hs256({"sub": "ada", "nbf": now + 600}))) == "token not yet valid"
    strict = Authenticator(secret=SECRET, leeway=0)
    assert str(refusal(strict, hs256({"sub": "ada", "iat": now + 5}))) == \
        "token issued in the future"


def test_exp_has_the_same_leeway():
    now = int(time.time())
    identity = AUTH.verify(hs256({"sub": "ada", "exp": now - 5}))
    # One rule: expires_at is when the token stops being accepted, exp + leeway (the session
    # closes a live connection then), not exp, which is already past.
    assert identity.expires_at == now - 5 + AUTH.leeway
    assert str(refusal(AUTH, hs256({"sub": "ada", "exp": now - 60}))) == "token expired"
    assert AUTH.verify(hs256({"sub": "ada"})).expires_at is None


@pytest.mark.parametrize("leeway", [0, 0.5, 30])
def test_a_token_is_accepted_exactly_until_its_expires_at(leeway):
    auth = Authenticator(secret=SECRET, leeway=leeway)
    exp = time.time() + 600
    assert auth.verify(hs256({"sub": "ada", "exp": exp})).expires_at == exp + leeway
    # Seen from later (exp moved back): accepted just before expires_at, refused at it.
    for past, accepted in ((leeway - 1, True), (leeway + 1, False)):
        token = hs256({"sub": "ada", "exp": time.time() - past})
        if accepted:
            assert auth.verify(token).expires_at > time.time()
        else:
            assert str(refusal(auth, token)) == "token expired"


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ["9999999999", "1", True, False, None, [1], {"n": 1}])
def test_times_must_be_numbers(claim, value):
    assert str(refusal(AUTH, hs256({"sub": "ada", claim: value}))) == f"{claim} must be a number"


# -- RS256, ES256: PEM files, JWKS files, and no algorithm confusion ------------------------------

@pytest.fixture
def keyfiles(tmp_path):
    (tmp_path / "rsa.pem").write_bytes(pem(RSA_KEY))
    (tmp_path / "ec.pem").write_bytes(pem(EC_KEY))
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "jwks.json").write_text(json.dumps(
        {"keys": [jwk(RSA_KEY, "r1"), jwk(EC_KEY, "e1"), jwk(other, "e2")]}))
    (tmp_path / "one.json").write_text(json.dumps({"keys": [jwk(EC_KEY)]}))
    return tmp_path


@pytest.mark.parametrize("key, alg, name", [(RSA_KEY, "RS256", "rsa.pem"),
                                            (EC_KEY, "ES256", "ec.pem")])
def test_rs256_and_es256_with_a_public_key_file(keyfiles, key, alg, name):
    auth = Authenticator(public_key_file=str(keyfiles / name))
    exp = int(time.time()) + 60
    identity = auth.verify(jwt.encode({"sub": "ada", "exp": exp}, key, algorithm=alg))
    assert identity == type(identity)("ada", float(exp) + auth.leeway)
    wrong = RSA_KEY if key is EC_KEY else EC_KEY
    other_alg = "RS256" if alg == "ES256" else "ES256"
    assert str(refusal(auth, jwt.encode({"sub": "ada"}, wrong, algorithm=other_alg))) == \
        f"algorithm {other_alg} not accepted"
    forged = jwt.encode({"sub": "ada"}, rsa.generate_private_key(65537, 2048)
                        if alg == "RS256" else ec.generate_private_key(ec.SECP256R1()),
                        algorithm=alg)
    assert str(refusal(auth, forged)) == "invalid token signature"
    assert str(refusal(auth, mint("ada", SECRET))) == "algorithm HS256 not accepted"


def test_a_jwks_file_chooses_the_key_by_kid(keyfiles):
    auth = Authenticator(jwks_file=str(keyfiles / "jwks.json"))
    rs = jwt.encode({"sub": "ada"}, RSA_KEY, algorithm="RS256", headers={"kid": "r1"})
    es = jwt.encode({"sub": "bob"}, EC_KEY, algorithm="ES256", headers={"kid": "e1"})
    assert (auth.verify(rs).user_id, auth.verify(es).user_id) == ("ada", "bob")
    # The only RSA key needs no kid; two EC keys do.
    assert auth.verify(jwt.encode({"sub": "ada"}, RSA_KEY, algorithm="RS256")).user_id == "ada"
    assert str(refusal(auth, jwt.encode({"sub": "a"}, EC_KEY, algorithm="ES256"))) == \
        "token has no kid"
    assert str(refusal(auth, jwt.encode({"sub": "a"}, EC_KEY, algorithm="ES256",
                                        headers={"kid": "e2"}))) == "invalid token signature"
    assert str(refusal(auth, jwt.encode({"sub": "a"}, EC_KEY, algorithm="ES256",
                                        headers={"kid": "nope"}))) == "unknown kid"
    assert str(refusal(auth, jwt.encode({"sub": "a"}, EC_KEY, algorithm="ES256",
                                        headers={"kid": "r1"}))) == "unknown kid"
    one = Authenticator(jwks_file=str(keyfiles / "one.json"))
    assert one.verify(jwt.encode({"sub": "ada"}, EC_KEY, algorithm="ES256")).user_id == "ada"


def _hs256_signed_with(key: bytes, claims: dict) -> str:
    # By hand: PyJWT itself refuses a PEM as an HMAC key when signing; an attacker does not.
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def test_hs256_signed_with_the_public_key_is_refused(keyfiles):
    """The algorithm-confusion forgery: the public key is public, so an HS256 token "signed"
    with its PEM bytes must never verify against it."""
    for name in ("rsa.pem", "ec.pem"):
        forged = _hs256_signed_with((keyfiles / name).read_bytes(), {"sub": "ada"})
        only_key = Authenticator(public_key_file=str(keyfiles / name))
        assert str(refusal(only_key, forged)) == "algorithm HS256 not accepted"
        beside = Authenticator(secret=SECRET, public_key_file=str(keyfiles / name))
        assert str(refusal(beside, forged)) == "invalid token signature"
    jwks = Authenticator(jwks_file=str(keyfiles / "jwks.json"))
    forged = _hs256_signed_with((keyfiles / "jwks.json").read_bytes(), {"sub": "ada"})
    assert str(refusal(jwks, forged)) == "algorithm HS256 not accepted"


def test_alg_none_is_refused(keyfiles):
    none = jwt.encode({"sub": "ada"}, None, algorithm="none")
    for auth in (AUTH, Authenticator(public_key_file=str(keyfiles / "rsa.pem"))):
        assert str(refusal(auth, none)) == "algorithm none not accepted"


@pytest.mark.parametrize("content, says", [
    (None, "cannot read key file"),
    (b"not a key", "not a PEM public key or certificate"),
    (pem(rsa.generate_private_key(65537, 1024)), "RS256 needs 2048+"),
    (pem(ec.generate_private_key(ec.SECP384R1())), "ES256 needs P-256"),
])
def test_an_unusable_public_key_file_is_a_key_file_error(tmp_path, content, says):
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyFileError, match=re.escape(says)):
        Authenticator(public_key_file=str(path))


@pytest.mark.parametrize("document, says", [
    ("[]", "not a JWKS"), ('{"keys": []}', "not a JWKS"), ("{", "not a JWKS"),
    (json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "kty must be RSA or EC"),
    (json.dumps({"keys": [{**jwk(EC_KEY), "d": "x"}]}), "public JWKs only"),
    (json.dumps({"keys": [{**jwk(EC_KEY), "alg": "HS256"}]}), "does not fit the key"),
    (json.dumps({"keys": [jwk(EC_KEY, "k"), jwk(RSA_KEY, "k")]}), "unique in the set"),
    (json.dumps({"keys": [{"kty": "RSA", "n": "AQAB"}]}), "not a usable RSA public key"),
])
def test_an_unusable_jwks_file_is_a_key_file_error(tmp_path, document, says):
    (tmp_path / "jwks.json").write_text(document)
    with pytest.raises(KeyFileError, match=re.escape(says)):
        Authenticator(jwks_file=str(tmp_path / "jwks.json"))


# -- origins -------------------------------------------------------------------------------------

@pytest.mark.parametrize("origin, host, allowed", [
    (None, "example.com", True),                       # not a browser
    ("http://localhost:3000", "chat.example.com", True),
    ("http://127.8.9.1", None, True),
    ("http://[::1]:8080", "x", True),
    ("https://chat.example.com", "chat.example.com", True),     # same host, default port
    ("http://Chat.Example.com:8765", "chat.example.com:8765", True),
    ("https://evil.example", "chat.example.com", False),
    ("http://chat.example.com:9999", "chat.example.com:8765", False),
    ("http://chat.example.com", "chat.example.com:8765", False),
    ("null", "chat.example.com", False),
    ("http://[::1", "x", False),
    ("http://u:p@localhost", "x", False),
])
def test_default_origins(origin, host, allowed):
    assert AUTH.origin_allowed(origin, host) is allowed


def test_a_list_of_origins_is_exactly_those():
    auth = Authenticator(secret=SECRET, allowed_origins=["https://app.example.com",
                                                         "http://LOCALHOST:3000/"])
    assert auth.origin_allowed("https://APP.example.com:443", "x")
    assert auth.origin_allowed("http://localhost:3000", "x")
    assert auth.origin_allowed(None, "x")
    assert not auth.origin_allowed("http://app.example.com", "app.example.com")
    assert not auth.origin_allowed("http://localhost:3001", "x")  # the list replaces defaults
    anyone = Authenticator(secret=SECRET, allowed_origins=["*"])
    assert anyone.origin_allowed("https://evil.example", "x") and anyone.origin_allowed("?", "")
    with pytest.raises(ValueError):
        Authenticator(secret=SECRET, allowed_origins=["https://app.example.com/path"])


@given(TEXT | st.none(), TEXT | st.none())
def test_origin_allowed_always_answers(origin, host):
    assert AUTH.origin_allowed(origin, host) in (True, False)


def test_a_verified_token_is_answered_again_only_while_it_is_valid():
    """The cache of verified tokens (``VERIFIED_TOKENS``): the same token again gets the same
    identity without a second check; past its ``exp`` (and the leeway) it is refused as a
    fresh one would be; a bad token is never kept; and the cache is bounded."""
    from threadline.transport import auth as auth_module

    auth = Authenticator(secret=SECRET, leeway=0)
    token = jwt.encode({"sub": "ada", "exp": time.time() + 1.0}, SECRET, algorithm="HS256")
    first = auth.verify(token)
    assert auth.verify(token) is first  # answered from the cache
    time.sleep(1.1)
    assert str(refusal(auth, token)) == "token expired"
    assert str(refusal(auth, token)) == "token expired"  # and not kept
    wrong = jwt.encode({"sub": "ada"}, "another-secret-0123456789abcdef0123456789",
                       algorithm="HS256")
    for _ in range(2):
        assert str(refusal(auth, wrong)) == "invalid token signature"
    oldest = mint("user0", SECRET)
    kept = auth.verify(oldest)
    for n in range(1, auth_module.VERIFIED_TOKENS + 1):
        auth.verify(mint(f"user{n}", SECRET))
    again = auth.verify(oldest)
    assert again == kept and again is not kept  # the oldest was let go: checked anew
