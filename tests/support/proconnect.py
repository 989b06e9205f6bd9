"""A small fake ProConnect (OpenID Connect provider) for offline tests, over https.

It behaves like ProConnect where Synapse can tell (numerique-gouv/proconnect-documentation,
`doc_fs/implementation_technique.md` and `donnees_fournies.md`):

- discovery at ``<issuer>/.well-known/openid-configuration`` with ``issuer`` =
  ``https://HOST:PORT/api/v2``, endpoints ``/api/v2/authorize|token|userinfo|session/end``
  and ``/api/v2/jwks``; PKCE S256 advertised (``code_challenge_methods_supported``);
- ``/authorize`` refuses any parameter outside ProConnect's list (error ``Y000400``, as
  ProConnect does), requires ``state`` and ``nonce`` of 32 characters or more and the
  exact redirect URI; it "signs the agent in" at once as `next_identity` and redirects
  back with a code (no login page);
- ``/token`` takes ``client_id`` and ``client_secret`` in the POST body only
  (``client_secret_post``), checks the PKCE verifier, answers an RS256 ID token;
- ``/userinfo`` answers ``application/jwt``: the claims as a signed JWT.

It runs in its own thread (stdlib ``ThreadingHTTPServer``), so it outlives per-test event
loops and serves a homeserver started before the tests. `ScratchCA` makes the certificate
authority given to Synapse through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

# ProConnect's authorize parameters ("Tout paramètre supplémentaire dans l'URL génèrera une
# erreur Y000400"), plus PKCE's two, which ProConnect supports.
AUTHORIZE_PARAMETERS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "claims",
        "state",
        "nonce",
        "prompt",
        "idp_hint",
        "code_challenge",
        "code_challenge_method",
    }
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ScratchCA:
    """A throwaway certificate authority and one server certificate for 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Aplus test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.key_file.chmod(0o600)


@dataclass
class Identity:
    """What ProConnect says of the agent who signs in (donnees_fournies.md)."""

    sub: str
    email: str
    given_name: str
    usual_name: str
    uid: str = "1"
    siret: str = "13002526500013"
    idp_id: str = "fia1v2"

    def claims(self) -> dict[str, str]:
        return {
            "sub": self.sub,
            "email": self.email,
            "given_name": self.given_name,
            "usual_name": self.usual_name,
            "uid": self.uid,
            "siret": self.siret,
            "idp_id": self.idp_id,
        }


@dataclass
class _Grant:
    identity: Identity
    client_id: str
    redirect_uri: str
    nonce: str
    code_challenge: str | None
    issued: float


@dataclass
class FakeProConnect:
    """The provider. Set `next_identity` before a login; read `authorize_requests` after."""

    ca: ScratchCA
    client_id: str
    client_secret: str
    redirect_uri: str
    next_identity: Identity | None = None
    # ProConnect documents 32 for both. Synapse (1.163, authlib's generate_token()) sends a
    # 30-character state: a deployment test lowers this to what Synapse sends, and says so.
    min_state_length: int = 32
    min_nonce_length: int = 32
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _tokens: dict[str, Identity] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(4)

    # -- lifecycle

    def start(self) -> FakeProConnect:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                provider._handle(self, "GET")

            def do_POST(self) -> None:
                provider._handle(self, "POST")

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca.cert_file, self.ca.key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def issuer(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}/api/v2"

    # -- JWT

    def _jwt(self, claims: dict[str, Any]) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": self._kid}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def _jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()

        def encode(n: int) -> str:
            return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self._kid,
                    "n": encode(numbers.n),
                    "e": encode(numbers.e),
                }
            ]
        }

    # -- HTTP

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body: dict[str, str] = {}
        if method == "POST":
            length = int(request.headers.get("Content-Length") or 0)
            raw = request.rfile.read(length).decode()
            body = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        route = (method, url.path)
        try:
            if route == ("GET", "/api/v2/.well-known/openid-configuration"):
                return self._json(request, 200, self._discovery())
            if route == ("GET", "/api/v2/jwks"):
                return self._json(request, 200, self._jwks())
            if route == ("GET", "/api/v2/authorize"):
                return self._authorize(request, query)
            if route == ("POST", "/api/v2/token"):
                return self._token(request, body)
            if route == ("GET", "/api/v2/userinfo"):
                return self._userinfo(request)
        except Exception as exc:  # a bug in the fake must show in the test, not hang it
            self.errors.append(f"{route}: {exc!r}")
            return self._json(request, 500, {"error": "server_error"})
        self._json(request, 404, {"error": "not_found"})

    def _discovery(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": base + "/authorize",
            "token_endpoint": base + "/token",
            "userinfo_endpoint": base + "/userinfo",
            "end_session_endpoint": base + "/session/end",
            "jwks_uri": base + "/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "scopes_supported": ["openid", "email", "given_name", "usual_name", "uid", "siret"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "userinfo_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "claims_parameter_supported": True,
        }

    def _fail(self, request: BaseHTTPRequestHandler, why: str) -> None:
        self.errors.append(why)
        self._json(request, 400, {"error": "Y000400", "error_description": why})

    def _authorize(self, request: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        self.authorize_requests.append(dict(query))
        extra = sorted(set(query) - AUTHORIZE_PARAMETERS)
        if extra:
            return self._fail(request, f"authorize: unexpected parameters {extra}")
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return self._fail(request, "authorize: wrong client_id or response_type")
        if query.get("redirect_uri") != self.redirect_uri:
            return self._fail(request, f"authorize: redirect_uri {query.get('redirect_uri')}")
        if len(query.get("state", "")) < self.min_state_length:
            return self._fail(request, f"authorize: state of {len(query.get('state', ''))} chars")
        if len(query.get("nonce", "")) < self.min_nonce_length:
            return self._fail(request, f"authorize: nonce of {len(query.get('nonce', ''))} chars")
        if "openid" not in query.get("scope", "").split():
            return self._fail(request, "authorize: scope without openid")
        challenge = query.get("code_challenge")
        if challenge is not None and query.get("code_challenge_method") != "S256":
            return self._fail(request, "authorize: code_challenge without S256")
        if self.next_identity is None:
            return self._fail(request, "authorize: no agent set to sign in")
        code = secrets.token_urlsafe(24)
        self._grants[code] = _Grant(
            self.next_identity,
            self.client_id,
            query["redirect_uri"],
            query["nonce"],
            challenge,
            time.time(),
        )
        target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
        request.send_response(302)
        request.send_header("Location", target)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def _token(self, request: BaseHTTPRequestHandler, body: dict[str, str]) -> None:
        self.token_requests.append({k: v for k, v in body.items() if k != "client_secret"})
        if request.headers.get("Authorization"):
            return self._fail(request, "token: client_secret_basic used, post expected")
        if body.get("client_id") != self.client_id or body.get("client_secret") != (
            self.client_secret
        ):
            return self._fail(request, "token: client_id/client_secret not in the body")
        grant = self._grants.pop(body.get("code", ""), None)
        if grant is None or time.time() - grant.issued > 30:  # ProConnect: 30 s codes
            return self._fail(request, "token: unknown or expired code")
        if body.get("redirect_uri") != grant.redirect_uri:
            return self._fail(request, "token: redirect_uri differs")
        if grant.code_challenge is not None:
            verifier = body.get("code_verifier", "")
            digest = _b64url(hashlib.sha256(verifier.encode()).digest())
            if digest != grant.code_challenge:
                return self._fail(request, "token: PKCE verifier does not match")
        now = int(time.time())
        access_token = secrets.token_urlsafe(24)
        self._tokens[access_token] = grant.identity
        id_token = self._jwt(
            {
                "iss": self.issuer,
                "aud": self.client_id,
                "sub": grant.identity.sub,
                "iat": now,
                "exp": now + 60,
                "nonce": grant.nonce,
                "acr": "eidas1",
                "amr": ["pwd"],
                "idp_id": grant.identity.idp_id,
            }
        )
        self._json(
            request,
            200,
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 60,
                "id_token": id_token,
                "scope": "openid email given_name usual_name uid siret",
            },
        )

    def _userinfo(self, request: BaseHTTPRequestHandler) -> None:
        auth = request.headers.get("Authorization", "")
        identity = self._tokens.get(auth.removeprefix("Bearer ").strip())
        if identity is None:
            return self._json(request, 401, {"error": "invalid_token"})
        claims: dict[str, Any] = {
            **identity.claims(),
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": int(time.time()),
        }
        payload = self._jwt(claims).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/jwt")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def _json(self, request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)
