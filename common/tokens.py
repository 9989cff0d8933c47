"""JWT access and refresh tokens: issue and verify, pure functions of (claims, keys, now).

Tokens carry iss, aud, sub (the project), iat, nbf, exp, jti, scope (space separated),
typ ("access" | "refresh"), fam (the refresh family), key (the API key id), and a `kid`
header. Only the configured algorithm is accepted, so alg=none and HS/RS confusion fail.
Verified access tokens are cached (the signature is not re-checked); revocation is checked
separately, at every use, against the deny-list (see common.auth).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

from common.errors import Unauthorized
from common.settings import ConfigError, Settings

TokenType = Literal["access", "refresh"]


@dataclass(frozen=True)
class Claims:
    """The verified content of a token."""

    project_id: str
    key_id: str
    scopes: tuple[str, ...]
    jti: str
    family: str
    token_type: TokenType
    issued_at: int
    expires_at: int

    def has_scope(self, scope: str) -> bool:
        """True if the token grants `scope`."""
        return scope in self.scopes


@dataclass(frozen=True)
class IssuedToken:
    """A signed token and the facts about it the caller stores or returns."""

    token: str
    jti: str
    expires_at: int


class KeySet:
    """The signing key and every key accepted for verification, by kid."""

    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.jwt_algorithm
        self.kid = settings.jwt_key_id
        self.verify_keys: dict[str, Any] = {}
        if self.algorithm == "HS256":
            secret = settings.require_jwt_secret().get_secret_value()
            self.signing_key: Any = secret
            self.verify_keys[self.kid] = secret
            return
        if settings.jwt_private_key is None:
            raise ConfigError(f"JWT_PRIVATE_KEY: required with JWT_ALGORITHM={self.algorithm}")
        private = _load_key(self.algorithm, settings.jwt_private_key.get_secret_value())
        if not hasattr(private, "public_key"):
            raise ConfigError(f"JWT_PRIVATE_KEY: not a private {self.algorithm} key")
        self.signing_key = private
        self.verify_keys[self.kid] = private.public_key()
        for kid, pem in settings.jwt_verify_keys.items():
            if kid != self.kid:
                key = _load_key(self.algorithm, pem, f"JWT_VERIFY_KEYS[{kid}]")
                # Only public halves are kept: a private PEM pasted here must never reach JWKS.
                self.verify_keys[kid] = key.public_key() if hasattr(key, "public_key") else key

    def jwks(self) -> dict[str, Any]:
        """Public keys as a JWK set (empty for HS256, whose key is secret)."""
        if self.algorithm == "HS256":
            return {"keys": []}
        keys = []
        for kid, key in self.verify_keys.items():
            if self.algorithm == "RS256":
                jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
            else:
                jwk = ECAlgorithm.to_jwk(key, as_dict=True)
            jwk.update({"kid": kid, "use": "sig", "alg": self.algorithm})
            keys.append(jwk)
        return {"keys": keys}


def _load_key(algorithm: str, pem: str, name: str = "JWT_PRIVATE_KEY") -> Any:
    try:
        return get_default_algorithms()[algorithm].prepare_key(pem)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: not a usable {algorithm} key ({exc})") from None


class TokenService:
    """Issues and verifies tokens for one key set; keeps a bounded verified-token cache."""

    def __init__(self, settings: Settings, *, cache_size: int = 10_000) -> None:
        self.keys = KeySet(settings)
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.access_ttl = settings.jwt_access_token_expire_minutes * 60
        self.refresh_ttl = settings.jwt_refresh_token_expire_days * 86400
        self.leeway = settings.jwt_leeway_seconds
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._cache_size = cache_size

    def issue(
        self,
        *,
        project_id: str,
        key_id: str,
        scopes: tuple[str, ...],
        token_type: TokenType,
        family: str,
        now: int,
        not_after: int | None = None,
    ) -> IssuedToken:
        """Sign a token of `token_type` valid from `now`, never past `not_after` (key's end)."""
        ttl = self.access_ttl if token_type == "access" else self.refresh_ttl
        if not_after is not None:
            ttl = max(0, min(ttl, not_after - now))
        jti = secrets.token_urlsafe(18)
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": project_id,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": jti,
            "scope": " ".join(scopes),
            "typ": token_type,
            "fam": family,
            "key": key_id,
        }
        token = jwt.encode(
            payload,
            self.keys.signing_key,
            algorithm=self.keys.algorithm,
            headers={"kid": self.keys.kid, "typ": "JWT"},
        )
        return IssuedToken(token, jti, now + ttl)

    def verify(self, token: str, expected: TokenType | None, now: int) -> Claims:
        """The claims of a valid token of the expected type (None: either); else Unauthorized."""
        cached = self._cache.get(token) if expected == "access" else None
        if cached is not None:
            if cached.expires_at + self.leeway <= now:
                self._cache.pop(token, None)
                raise Unauthorized("token has expired")
            return cached
        claims = self._decode(token, expected, now)
        if expected == "access":
            if len(self._cache) >= self._cache_size:
                self._cache.popitem(last=False)
            self._cache[token] = claims
        return claims

    def _decode(self, token: str, expected: TokenType | None, now: int) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        if header.get("alg") != self.keys.algorithm:
            raise Unauthorized("token algorithm is not accepted")
        key = self.keys.verify_keys.get(str(header.get("kid", "")))
        if key is None:
            raise Unauthorized("token signed with an unknown key")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[self.keys.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                # time claims are checked below against the injected `now`
                options={
                    "require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer is not accepted") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        return self._claims(payload, expected, now)

    def _claims(self, payload: dict[str, Any], expected: TokenType | None, now: int) -> Claims:
        try:
            exp, nbf, iat = int(payload["exp"]), int(payload["nbf"]), int(payload["iat"])
            token_type = payload.get("typ")
            claims = Claims(
                project_id=str(payload["sub"]),
                key_id=str(payload.get("key", "")),
                scopes=tuple(str(payload.get("scope", "")).split()),
                jti=str(payload["jti"]),
                family=str(payload.get("fam", "")),
                token_type="refresh" if token_type == "refresh" else "access",
                issued_at=iat,
                expires_at=exp,
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            raise Unauthorized("invalid token claims") from None
        if token_type not in ("access", "refresh"):
            raise Unauthorized("token type is missing or unknown")
        if expected is not None and token_type != expected:
            article = "an" if token_type == "access" else "a"
            raise Unauthorized(f"{article} {token_type} token cannot be used as {expected}")
        if exp + self.leeway <= now:
            raise Unauthorized("token has expired")
        if nbf - self.leeway > now:
            raise Unauthorized("token is not valid yet")
        return claims
