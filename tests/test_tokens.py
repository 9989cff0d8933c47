"""Tests of common.tokens: issuing and verifying JWTs as pure functions of (claims, keys, now)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from conftest import JWT_SECRET, make_settings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from common.errors import Unauthorized
from common.scopes import ALL_SCOPES
from common.settings import ConfigError, Settings, load_settings
from common.tokens import TokenService

NOW = 1_750_000_000
DB = "postgresql://postgres@127.0.0.1:9/unused"
REDIS = "redis://127.0.0.1:9/0"


def _settings(**overrides: Any) -> Settings:
    return make_settings(DB, REDIS, **overrides)


def _pem_private(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem_public(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    """One RSA key for the module (generating one costs tens of milliseconds)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> Any:
    """One P-256 key for the module."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def service() -> TokenService:
    """An HS256 token service with the default lifetimes (15 min access, 7 days refresh)."""
    return TokenService(_settings())


def _issue(service: TokenService, kind: Any = "access", now: int = NOW, **kw: Any) -> str:
    return service.issue(
        project_id="proj_a",
        key_id="0123456789abcdef",
        scopes=ALL_SCOPES,
        token_type=kind,
        family="fam1",
        now=now,
        **kw,
    ).token


def _claims(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "iss": "bradax",
        "aud": "bradax-broker",
        "sub": "proj_a",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 900,
        "jti": "j1",
        "scope": "invoke_llm read_metrics",
        "typ": "access",
        "fam": "fam1",
        "key": "0123456789abcdef",
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def _forge(payload: dict[str, Any], key: Any = JWT_SECRET, alg: str = "HS256", **hdr: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": "k1", **hdr})


def _refused(service: TokenService, token: str, message: str, kind: Any = "access") -> None:
    with pytest.raises(Unauthorized) as caught:
        service.verify(token, kind, NOW)
    assert caught.value.message == message
    assert caught.value.status == 401
    assert caught.value.code == "invalid_token"


def test_issued_access_token_carries_every_claim(service: TokenService) -> None:
    """An access token holds iss, aud, sub, iat, nbf, exp, jti, scope, typ, fam, key and a kid."""
    token = _issue(service)
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(
        token,
        JWT_SECRET,
        algorithms=["HS256"],
        audience="bradax-broker",
        options={"verify_exp": False},
    )
    assert header == {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    assert set(payload) == {
        "iss", "aud", "sub", "iat", "nbf", "exp", "jti", "scope", "typ", "fam", "key"
    }  # fmt: skip
    assert payload["iss"] == "bradax"
    assert payload["aud"] == "bradax-broker"
    assert payload["sub"] == "proj_a"
    assert (payload["iat"], payload["nbf"], payload["exp"]) == (NOW, NOW, NOW + 900)
    assert payload["scope"] == "invoke_llm read_metrics"
    assert payload["typ"] == "access"
    assert payload["fam"] == "fam1"
    assert payload["key"] == "0123456789abcdef"


def test_verify_returns_the_claims(service: TokenService) -> None:
    """verify() gives back project, key, scopes, family, type and times of a valid token."""
    issued = service.issue(
        project_id="proj_a",
        key_id="0123456789abcdef",
        scopes=("read_metrics",),
        token_type="access",
        family="fam1",
        now=NOW,
    )
    claims = service.verify(issued.token, "access", NOW + 10)
    assert claims.project_id == "proj_a"
    assert claims.key_id == "0123456789abcdef"
    assert claims.scopes == ("read_metrics",)
    assert claims.jti == issued.jti
    assert claims.family == "fam1"
    assert claims.token_type == "access"
    assert (claims.issued_at, claims.expires_at) == (NOW, NOW + 900)
    assert claims.has_scope("read_metrics")
    assert not claims.has_scope("invoke_llm")


def test_lifetimes_come_from_settings() -> None:
    """Access and refresh lifetimes follow JWT_ACCESS_TOKEN_EXPIRE_MINUTES / _REFRESH_..._DAYS."""
    service = TokenService(
        _settings(jwt_access_token_expire_minutes=2, jwt_refresh_token_expire_days=1)
    )
    access = service.issue(
        project_id="p", key_id="k", scopes=ALL_SCOPES, token_type="access", family="f", now=NOW
    )
    refresh = service.issue(
        project_id="p", key_id="k", scopes=ALL_SCOPES, token_type="refresh", family="f", now=NOW
    )
    assert (service.access_ttl, access.expires_at) == (120, NOW + 120)
    assert (service.refresh_ttl, refresh.expires_at) == (86400, NOW + 86400)


def test_not_after_caps_the_expiry(service: TokenService) -> None:
    """A token never outlives `not_after` (the API key's end of rotation grace)."""
    issued = service.issue(
        project_id="p",
        key_id="k",
        scopes=ALL_SCOPES,
        token_type="access",
        family="f",
        now=NOW,
        not_after=NOW + 60,
    )
    assert issued.expires_at == NOW + 60
    assert service.verify(issued.token, "access", NOW + 30).expires_at == NOW + 60
    with pytest.raises(Unauthorized, match="token has expired"):
        service.verify(issued.token, "access", NOW + 60 + 30)


def test_expired_token_is_refused(service: TokenService) -> None:
    """A token issued 15 min + leeway ago is refused as expired."""
    token = _issue(service, now=NOW - 900 - 30)
    _refused(service, token, "token has expired")


def test_expiry_allows_the_leeway(service: TokenService) -> None:
    """A token a few seconds past exp is still accepted within JWT_LEEWAY_SECONDS (30)."""
    token = _issue(service, now=NOW - 900 - 29)
    assert service.verify(token, "access", NOW).project_id == "proj_a"


def test_cached_token_still_expires(service: TokenService) -> None:
    """A verified (cached) access token is refused once its time is up."""
    token = _issue(service)
    assert service.verify(token, "access", NOW).jti
    with pytest.raises(Unauthorized, match="token has expired"):
        service.verify(token, "access", NOW + 900 + 30)


def test_not_yet_valid_token_is_refused(service: TokenService) -> None:
    """A token whose nbf is beyond the leeway in the future is refused."""
    token = _issue(service, now=NOW + 31)
    _refused(service, token, "token is not valid yet")


def test_tampered_payload_is_refused(service: TokenService) -> None:
    """Changing one claim without re-signing breaks the signature."""
    header, payload, signature = _issue(service).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "proj_other"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    _refused(service, f"{header}.{forged}.{signature}", "invalid token")


def test_tampered_signature_is_refused(service: TokenService) -> None:
    """A token whose signature bytes were altered is refused."""
    token = _issue(service)
    head, _, signature = token.rpartition(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    _refused(service, f"{head}.{flipped}", "invalid token")


def test_token_signed_with_another_secret_is_refused(service: TokenService) -> None:
    """A well-formed token signed with a different secret is refused."""
    token = _forge(_claims(), key="another-secret-" + "y" * 40)
    _refused(service, token, "invalid token")


def test_alg_none_is_refused(service: TokenService) -> None:
    """An unsigned token (alg=none) is refused before any claim is read."""
    token = jwt.encode(_claims(), None, algorithm="none", headers={"kid": "k1"})
    _refused(service, token, "token algorithm is not accepted")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aud": "someone-else"}, "token audience is not accepted"),
        ({"iss": "evil"}, "token issuer is not accepted"),
        ({"jti": None}, "invalid token"),
        ({"exp": None}, "invalid token"),
        ({"sub": None}, "invalid token"),
        ({"typ": None}, "token type is missing or unknown"),
        ({"typ": "id"}, "token type is missing or unknown"),
        ({"exp": "soon"}, "invalid token claims"),
        ({"exp": 1e400}, "invalid token claims"),
    ],
)
def test_bad_claims_are_refused(
    service: TokenService, overrides: dict[str, Any], message: str
) -> None:
    """Wrong audience or issuer, missing or malformed claims: each is a 401 naming the fault."""
    _refused(service, _forge(_claims(**overrides)), message)


def test_unknown_kid_is_refused(service: TokenService) -> None:
    """A token naming a key id the service does not hold is refused."""
    _refused(service, _forge(_claims(), kid="k9"), "token signed with an unknown key")


def test_refresh_token_is_not_an_access_token(service: TokenService) -> None:
    """A refresh token presented where an access token is required is refused."""
    _refused(service, _issue(service, "refresh"), "a refresh token cannot be used as access")


def test_access_token_is_not_a_refresh_token(service: TokenService) -> None:
    """An access token presented as a refresh token is refused."""
    token = _issue(service, "access")
    _refused(service, token, "an access token cannot be used as refresh", kind="refresh")


def test_either_type_is_accepted_when_none_is_expected(service: TokenService) -> None:
    """verify(..., None) accepts an access or a refresh token and reports which it was."""
    assert service.verify(_issue(service, "access"), None, NOW).token_type == "access"
    assert service.verify(_issue(service, "refresh"), None, NOW).token_type == "refresh"
    _refused(service, _forge(_claims(typ="id")), "token type is missing or unknown", kind=None)


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.e30", "é.é.é", "W10.e30.x"],
)
def test_malformed_tokens_are_refused(service: TokenService, garbage: str) -> None:
    """Anything that is not a JWT is a 401, never an exception of another kind."""
    with pytest.raises(Unauthorized):
        service.verify(garbage, "access", NOW)


def test_rs256_token_refused_when_hs256_is_configured(service: TokenService, rsa_key: Any) -> None:
    """With HS256 configured, a token signed with RS256 is refused (no algorithm switching)."""
    token = _forge(_claims(), key=rsa_key, alg="RS256")
    _refused(service, token, "token algorithm is not accepted")


def test_hs256_token_signed_with_the_public_key_is_refused(rsa_key: Any) -> None:
    """With RS256 configured, an HS256 token keyed by the public PEM is refused (confusion)."""
    service = TokenService(_settings(jwt_algorithm="RS256", jwt_private_key=_pem_private(rsa_key)))
    public_pem = _pem_public(rsa_key).encode()
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"k1","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(_claims()).encode()).rstrip(b"=")
    import hashlib
    import hmac

    mac = hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()
    token = b".".join((header, body, base64.urlsafe_b64encode(mac).rstrip(b"="))).decode()
    _refused(service, token, "token algorithm is not accepted")


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_jwks_lets_others_verify_offline(algorithm: str, rsa_key: Any, ec_key: Any) -> None:
    """A token verifies with a PyJWK built from the served JWK set, which holds no private part."""
    key = rsa_key if algorithm == "RS256" else ec_key
    service = TokenService(_settings(jwt_algorithm=algorithm, jwt_private_key=_pem_private(key)))
    now = int(time.time())
    token = _issue(service, now=now)
    jwks = json.loads(json.dumps(service.keys.jwks()))
    assert [k["kid"] for k in jwks["keys"]] == ["k1"]
    assert {"d", "p", "q", "dp", "dq", "qi"}.isdisjoint(jwks["keys"][0])
    assert jwks["keys"][0]["alg"] == algorithm
    assert jwks["keys"][0]["use"] == "sig"
    public = jwt.PyJWK(jwks["keys"][0])
    payload = jwt.decode(token, public, algorithms=[algorithm], audience="bradax-broker")
    assert payload["sub"] == "proj_a"
    assert service.verify(token, "access", now).project_id == "proj_a"


def test_hs256_publishes_no_keys(service: TokenService) -> None:
    """With HS256 the JWK set is empty: the shared secret is never published."""
    assert service.keys.jwks() == {"keys": []}


def test_rotation_by_kid_keeps_old_tokens_valid(rsa_key: Any) -> None:
    """After rotation, old-kid tokens verify through JWT_VERIFY_KEYS and JWKS lists both keys."""
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    before = TokenService(
        _settings(jwt_algorithm="RS256", jwt_private_key=_pem_private(old), jwt_key_id="k0")
    )
    old_token = _issue(before)
    after = TokenService(
        _settings(
            jwt_algorithm="RS256",
            jwt_private_key=_pem_private(rsa_key),
            jwt_key_id="k1",
            jwt_verify_keys={"k0": _pem_public(old)},
        )
    )
    new_token = _issue(after)
    assert jwt.get_unverified_header(new_token)["kid"] == "k1"
    assert after.verify(old_token, "access", NOW).project_id == "proj_a"
    assert after.verify(new_token, "access", NOW).project_id == "proj_a"
    assert sorted(k["kid"] for k in after.keys.jwks()["keys"]) == ["k0", "k1"]
    retired = TokenService(_settings(jwt_algorithm="RS256", jwt_private_key=_pem_private(rsa_key)))
    _refused(retired, old_token, "token signed with an unknown key")


def test_private_key_in_verify_keys_is_published_public_only(rsa_key: Any) -> None:
    """A private PEM put in JWT_VERIFY_KEYS by mistake is published as its public half only."""
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    service = TokenService(
        _settings(
            jwt_algorithm="RS256",
            jwt_private_key=_pem_private(rsa_key),
            jwt_verify_keys={"k0": _pem_private(old)},
        )
    )
    for jwk in service.keys.jwks()["keys"]:
        assert "d" not in jwk


def test_bad_key_material_is_a_config_error() -> None:
    """An unparseable JWT_PRIVATE_KEY or JWT_VERIFY_KEYS entry is a one-line ConfigError."""
    with pytest.raises(ConfigError, match=r"^JWT_PRIVATE_KEY: "):
        TokenService(_settings(jwt_algorithm="RS256", jwt_private_key="not a pem"))


def test_short_secret_is_refused_at_start() -> None:
    """A JWT_SECRET_KEY shorter than 32 bytes is refused when settings are built."""
    with pytest.raises(ValidationError):
        _settings(jwt_secret_key="x" * 31)
    with pytest.raises(ConfigError, match=r"^JWT_SECRET_KEY: must be at least 32 bytes$"):
        load_settings(jwt_secret_key="x" * 31, database_url=DB)


def test_missing_secret_is_a_config_error() -> None:
    """HS256 without JWT_SECRET_KEY cannot build a token service."""
    with pytest.raises(ConfigError, match=r"^JWT_SECRET_KEY: not set"):
        TokenService(_settings(jwt_secret_key=None))


def test_asymmetric_algorithm_requires_a_private_key() -> None:
    """RS256 without JWT_PRIVATE_KEY is refused when settings are built."""
    with pytest.raises(ConfigError, match="JWT_PRIVATE_KEY is required with JWT_ALGORITHM=RS256"):
        load_settings(jwt_algorithm="RS256", jwt_secret_key=JWT_SECRET, database_url=DB)
