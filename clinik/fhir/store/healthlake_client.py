"""The wire to an AWS HealthLake datastore: the control plane (boto3 `healthlake`,
`describe_fhir_datastore`) checked at start-up, and FHIR calls to the datastore
endpoint over HTTPS, signed with SigV4 by botocore's signer (its signing key kept for
the day), sent by libcurl (pycurl: one handle and kept-alive connection per thread,
connect and overall timeouts, TLS verified against the system's CAs), inside the quota
(healthlake_quota) with adaptive retries.

Nothing here logs a URL, a query string or a body: they carry PHI.
"""

import os
import random
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import boto3
import orjson
import pycurl
from botocore.auth import SIGNED_HEADERS_BLACKLIST, SigV4Auth, _host_from_url
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from clinik.fhir.http import FhirError
from clinik.fhir.store.healthlake_quota import Quota

SERVICE = "healthlake"
THROTTLED_STATUSES = frozenset({429, 503})
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class DatastoreRefused(Exception):
    """The datastore cannot hold our PHI: the process must not start serving."""


@dataclass(frozen=True)
class DatastoreInfo:
    id: str
    status: str
    type_version: str
    endpoint: str
    cmk_type: str
    kms_key_id: str

    @classmethod
    def from_describe(cls, answer: dict[str, Any]) -> "DatastoreInfo":
        props = answer.get("DatastoreProperties") or {}
        kms = (props.get("SseConfiguration") or {}).get("KmsEncryptionConfig") or {}
        return cls(
            id=str(props.get("DatastoreId", "")),
            status=str(props.get("DatastoreStatus", "")),
            type_version=str(props.get("DatastoreTypeVersion", "")),
            endpoint=str(props.get("DatastoreEndpoint", "")),
            cmk_type=str(kms.get("CmkType", "")),
            kms_key_id=str(kms.get("KmsKeyId", "")),
        )

    def problems(self, *, production: bool) -> list[str]:
        """Why this datastore may not hold our PHI (empty: it may). No secrets."""
        found = []
        if self.status != "ACTIVE":
            found.append(f"the datastore is {self.status or 'in an unknown state'}, not ACTIVE")
        if self.type_version != "R4":
            found.append(f"the datastore is FHIR {self.type_version or '?'}, not R4")
        if production and self.cmk_type != "CUSTOMER_MANAGED_KMS_KEY":
            found.append(
                "the datastore is not encrypted with a customer-managed KMS key"
                " (the privacy policy's encryption at rest is checked, not assumed)"
            )
        parts = urlsplit(self.endpoint)
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
            found.append("the datastore endpoint is not HTTPS")
        return found


def describe(
    datastore_id: str, *, region: str, endpoint_url: str | None = None, timeout: float = 5.0
) -> DatastoreInfo:
    """The datastore as the control plane describes it (credentials: the standard
    AWS chain: environment, shared config or profile, container or instance role)."""
    client = boto3.session.Session(region_name=region).client(
        SERVICE,
        endpoint_url=endpoint_url or None,
        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"mode": "adaptive"}),
    )
    return DatastoreInfo.from_describe(client.describe_fhir_datastore(DatastoreId=datastore_id))


def unavailable(retry_after: int, why: str = "busy") -> FhirError:
    """503 with Retry-After: the store cannot serve the request now. Never a hang."""
    return FhirError(
        503,
        "throttled" if why == "busy" else "transient",
        "The FHIR store is "
        + ("at its request quota" if why == "busy" else "not answering")
        + f"; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


class Answer:
    """The datastore's answer. `headers`: lower-case names, parsed from the raw header
    lines only when asked for (most answers never are)."""

    __slots__ = ("_head", "_headers", "body", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        head: list[bytes] | None = None,
    ) -> None:
        self.status, self.body = status, body
        self._headers, self._head = headers, head

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = _headers(self._head or [])
        return self._headers

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class HealthLakeClient:
    """FHIR REST calls to one datastore endpoint, signed per request."""

    def __init__(
        self,
        endpoint: str,
        *,
        region: str,
        quota: Quota,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        max_attempts: int = 4,
        retry_budget: float = 3.0,
        credentials: Credentials | None = None,
    ) -> None:
        self.base = endpoint.rstrip("/") + "/"
        parts = urlsplit(self.base)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.region = region
        self.quota = quota
        self.max_attempts = max(1, max_attempts)
        self.retry_budget = retry_budget
        self._session = boto3.session.Session(region_name=region)
        self._credentials = credentials
        # The datastore's one origin (paging links elsewhere are refused before a call).
        self._pool: Transport = CurlTransport(
            self.origin, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self._signer: tuple[Any, SigV4Auth] | None = None

    def _auth(self) -> SigV4Auth:
        """botocore's SigV4 signer for the current credentials (rebuilt when the
        chain rotates them, e.g. an instance role's)."""
        credentials = self._credentials or self._session.get_credentials()
        if credentials is None:
            raise FhirError(503, "transient", "The FHIR store has no AWS credentials configured")
        frozen = credentials.get_frozen_credentials()
        signer = self._signer
        if signer is None or signer[0] != frozen:
            signer = (frozen, _DaySigner(frozen, SERVICE, self.region))
            self._signer = signer
        return signer[1]

    def url(self, path: str, params: list[tuple[str, str]] | None = None) -> str:
        return self.base + path.lstrip("/") + (f"?{urlencode(params)}" if params else "")

    def owns(self, url: str) -> bool:
        """Whether a URL (a paging link the datastore gave) is on its own endpoint."""
        return url.startswith(self.base)

    def _signed(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> dict[str, str]:
        """The headers of the request signed by botocore (SigV4, service healthlake)."""
        request = _ToSign(method, url, dict(headers), body or b"")
        self._auth().add_auth(request)
        return request.headers

    def call(
        self,
        method: str,
        path_or_url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: Any = None,
        form: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        kind: str = "crud",
        idempotent: bool = True,
    ) -> Answer:
        """One FHIR interaction, within the quota, retried on throttling and transient
        failures with jittered exponential backoff while the retry budget lasts; a
        request that still cannot be served raises 503 + Retry-After. A call that is not
        `idempotent` (a transaction bundle) is sent again only when throttled (429: not
        applied), never after a timeout or a 5xx, whose outcome is unknown."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url, params)
        if "://" in path_or_url and not self.owns(url):
            raise FhirError(400, "invalid", "This paging link is not one this server issued")
        data: bytes | None = None
        sent = {"Accept": "application/fhir+json"}
        if body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            sent["Content-Type"] = "application/fhir+json"
        elif form is not None:
            data = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        sent.update(headers or {})
        deadline = time.monotonic() + self.retry_budget
        retry_after = 1
        for attempt in range(self.max_attempts):
            self.quota.acquire(kind, deadline)
            signed = self._signed(method, url, data, sent)
            try:
                response = self._pool.request(
                    method, url[len(self.origin) :], signed, data, reuse=idempotent
                )
            except TransportFailure:
                # Timeouts and broken connections: every idempotent call we make (creates
                # are PUTs of ids we chose) is safe to send again; a transaction is not.
                status, answer_headers = 0, {}
            else:
                status = response.status
                if status not in RETRYABLE_STATUSES:
                    return response
                answer_headers = response.headers
            if status in THROTTLED_STATUSES:
                self.quota.slow_down(kind)
            if not idempotent and status != 429:
                raise unavailable(5, "down")
            hinted = _retry_after(answer_headers.get("retry-after"))
            pause = hinted if hinted is not None else _backoff(attempt)
            retry_after = max(1, round(pause + 0.5))
            if attempt + 1 >= self.max_attempts or time.monotonic() + pause > deadline:
                break
            time.sleep(pause)
        raise unavailable(retry_after, "busy" if status in THROTTLED_STATUSES else "down")


class TransportFailure(Exception):
    """The call failed at the connection: refused, reset, timed out or a malformed
    answer. Whether the datastore acted on it is unknown. The message names the
    failure only: never a URL or a body."""


class Transport(Protocol):
    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None, *, reuse: bool
    ) -> Answer: ...


class CurlTransport:
    """HTTP/1.1 to one origin through libcurl (pycurl). Each thread keeps its own easy
    handle, and with it its kept-alive connection: libcurl checks a kept connection
    before reusing it and, when the server had closed it and nothing came back, sends
    the request once more on a new one. `reuse=False` (a request that must not be sent
    twice) takes a new connection, which libcurl never resends on. Timeouts: connect,
    and the whole call (connect + read). No redirects, HTTP(S) only, TLS verified
    against the system's CAs; nothing logged (libcurl's verbose output stays off)."""

    def __init__(self, origin: str, *, connect_timeout: float, read_timeout: float) -> None:
        self.origin = origin
        self.connect_ms = max(1, round(connect_timeout * 1000))
        self.total_ms = max(1, round((connect_timeout + read_timeout) * 1000))
        paths = ssl.get_default_verify_paths()
        self.cafile = paths.cafile or paths.openssl_cafile
        self.capath = paths.capath or paths.openssl_capath
        self._local = threading.local()
        _TRANSPORTS.add(self)

    def _handle(self) -> "pycurl.Curl":
        curl = getattr(self._local, "curl", None)
        if curl is None:
            curl = pycurl.Curl()
            curl.setopt(pycurl.NOSIGNAL, 1)
            curl.setopt(pycurl.USERAGENT, "ClinikAPI")  # not libcurl's and OpenSSL's versions
            curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
            curl.setopt(pycurl.FOLLOWLOCATION, 0)
            curl.setopt(pycurl.MAXCONNECTS, 1)
            curl.setopt(pycurl.TCP_NODELAY, 1)
            curl.setopt(pycurl.CONNECTTIMEOUT_MS, self.connect_ms)
            curl.setopt(pycurl.TIMEOUT_MS, self.total_ms)
            curl.setopt(pycurl.SSL_VERIFYPEER, 1)
            curl.setopt(pycurl.SSL_VERIFYHOST, 2)
            if self.cafile and os.path.exists(self.cafile):
                curl.setopt(pycurl.CAINFO, self.cafile)
            if self.capath and os.path.isdir(self.capath):
                curl.setopt(pycurl.CAPATH, self.capath)
            self._local.curl = curl
        return curl

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None, *, reuse: bool
    ) -> Answer:
        lines = [f"{name}: {value}" for name, value in headers.items()]
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a request header holds a line break")
        lines.append("Expect:")  # no 100-continue round trip before a large body
        curl = self._handle()
        curl.setopt(pycurl.URL, self.origin + target)
        curl.setopt(pycurl.HTTPHEADER, lines)
        if body is None and method not in ("POST", "PUT", "PATCH"):
            curl.setopt(pycurl.HTTPGET, 1)
        else:
            curl.setopt(pycurl.POSTFIELDS, body or b"")
        curl.setopt(pycurl.CUSTOMREQUEST, method)
        curl.setopt(pycurl.FRESH_CONNECT, 0 if reuse else 1)
        head: list[bytes] = []
        chunks: list[bytes] = []
        curl.setopt(pycurl.HEADERFUNCTION, head.append)
        curl.setopt(pycurl.WRITEFUNCTION, chunks.append)
        try:
            curl.perform()
        except pycurl.error as error:
            code = error.args[0] if error.args else 0
            if code == pycurl.E_OPERATION_TIMEDOUT:
                raise TransportFailure("timed out") from None
            raise TransportFailure(f"the connection failed (libcurl error {code})") from None
        return Answer(curl.getinfo(pycurl.RESPONSE_CODE), b"".join(chunks), head=head)


_TRANSPORTS: "weakref.WeakSet[CurlTransport]" = weakref.WeakSet()


def _forget_connections() -> None:
    """A forked worker opens its own connections, never its parent's."""
    for transport in list(_TRANSPORTS):
        transport._local = threading.local()


os.register_at_fork(after_in_child=_forget_connections)


def _headers(lines: list[bytes]) -> dict[str, str]:
    """The final answer's headers (after any 1xx interim answer), lower-case names,
    repeated ones joined with commas."""
    found: dict[str, str] = {}
    for line in lines:
        if line.startswith(b"HTTP/"):
            found = {}
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        key = name.strip().lower().decode("latin-1")
        text = value.strip().decode("latin-1")
        found[key] = f"{found[key]}, {text}" if key in found else text
    return found


class _ToSign:
    """What botocore's SigV4Auth reads and writes of a request (method, url, headers,
    body, params, context): a plain dict of headers, where AWSRequest builds
    email.message-based header objects (we never send a header twice)."""

    __slots__ = ("body", "context", "headers", "method", "params", "url")

    def __init__(self, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.params: dict[str, str] = {}
        self.context: dict[str, Any] = {}


class _Headers(dict[str, str]):
    """The headers to sign, as botocore's HTTPHeaders answers them (`get_all`)."""

    def get_all(self, name: str, failobj: Any = None) -> Any:
        return [self[name]] if name in self else failobj


class _DaySigner(SigV4Auth):
    """botocore's SigV4 signer, keeping the signing key it derives from the secret for
    the day it is valid (four HMACs per request saved; the signature is the same), and
    the headers to sign in a plain dict (the same names and values)."""

    _day: tuple[str, bytes] | None = None
    _hosts: dict[str, str]

    def headers_to_sign(self, request: Any) -> Any:
        selected = _Headers()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower not in SIGNED_HEADERS_BLACKLIST:
                selected[lower] = value
        if "host" not in selected:
            hosts = self.__dict__.setdefault("_hosts", {})
            origin = request.url[: request.url.find("/", 8)]
            if origin not in hosts:
                hosts[origin] = _host_from_url(request.url)
            selected["host"] = hosts[origin]
        return selected

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        day = request.context["timestamp"][0:8]
        kept = self._day
        if kept is None or kept[0] != day:
            key = self._sign(f"AWS4{self.credentials.secret_key}".encode(), day)
            for part in (self._region_name, self._service_name, "aws4_request"):
                key = self._sign(key, part)
            kept = self._day = (day, key)
        return str(self._sign(kept[1], string_to_sign, hex=True))


def _backoff(attempt: int) -> float:
    """Full jitter: a random pause up to 0.1 s · 2^attempt."""
    return random.uniform(0, 0.1 * (2**attempt))  # jitter, not security


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return min(float(value.strip()), 30.0)
    return None
