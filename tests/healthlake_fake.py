"""A local HTTP server that speaks AWS HealthLake at the wire, for the tests:

- the control plane the store calls (JSON 1.0 protocol, `X-Amz-Target:
  HealthLake.DescribeFHIRDatastore`), and
- the FHIR endpoint `/datastore/{id}/r4/...`: create (PUT with an id), read, vread,
  update (If-Match), delete, `$erase` (the resource and its versions, like HealthLake),
  instance history, search (GET and POST `_search`) with `_count` <= 100 (else 400,
  HealthLake's limit), paging links on its own host, `_include`, `_revinclude`,
  chained parameters and `_has`, `_summary=count`, and transaction bundles (POST to the
  base: at most 160 entries, in order, all or nothing, `urn:uuid:` references rewritten).

Every request must carry a SigV4 signature (service `healthlake`) that botocore,
recomputing it here from the test credentials, finds equal: a wrong key or secret
gets 403 like AWS. Throttling on demand: `throttle_share` of FHIR requests get 429.

The search implements the parameters the tests use and answers 400 to any other, so
no test can pass on a result widened by an ignored parameter. Storage: dicts.
Malicious modes (`ignore_tag`, `inject`) make it answer outside the tenant.
"""

import hmac
import random
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY = "AKIDFAKEHEALTHLAKE01"
SECRET_KEY = "fake-healthlake-secret-key-for-tests-only"
REGION = "us-east-1"
TENANT_SYSTEM = "https://clinikapi.com/fhir/tenant"
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+),"
    r" ?Signature=(?P<sig>[0-9a-f]+)"
)

# (type, code) -> (kind, paths). Kinds: string, token, reference, date.
PARAMS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("*", "_id"): ("id", ()),
    ("*", "_tag"): ("token", ("meta.tag",)),
    ("*", "_lastUpdated"): ("date", ("meta.lastUpdated",)),
    ("Patient", "family"): ("string", ("name.family",)),
    ("Patient", "given"): ("string", ("name.given",)),
    ("Patient", "name"): ("string", ("name.family", "name.given", "name.text")),
    ("Patient", "gender"): ("token", ("gender",)),
    ("Patient", "identifier"): ("token", ("identifier",)),
    ("Patient", "birthdate"): ("date", ("birthDate",)),
    ("Patient", "organization"): ("reference", ("managingOrganization",)),
    ("Organization", "name"): ("string", ("name",)),
    ("Observation", "subject"): ("reference", ("subject",)),
    ("Observation", "patient"): ("reference", ("subject",)),
    ("Observation", "code"): ("token", ("code.coding",)),
    ("Observation", "status"): ("token", ("status",)),
    ("Encounter", "subject"): ("reference", ("subject",)),
    ("Encounter", "patient"): ("reference", ("subject",)),
    ("Encounter", "status"): ("token", ("status",)),
    ("Condition", "subject"): ("reference", ("subject",)),
    ("Condition", "patient"): ("reference", ("subject",)),
    ("Condition", "code"): ("token", ("code.coding",)),
}
MAX_COUNT = 100
MAX_BUNDLE_ENTRIES = 160


def _now() -> str:
    moment = datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _values(node: Any, path: str) -> list[Any]:
    current = [node]
    for part in path.split("."):
        following = []
        for item in current:
            if isinstance(item, dict) and part in item:
                value = item[part]
                following += value if isinstance(value, list) else [value]
        current = following
    return current


class Stored:
    """One resource id: its versions, oldest first (body None for a delete)."""

    def __init__(self) -> None:
        self.versions: list[tuple[dict[str, Any] | None, str, str]] = []  # body, method, when

    @property
    def current(self) -> dict[str, Any] | None:
        return self.versions[-1][0] if self.versions else None


class FakeHealthLake:
    def __init__(self, *, cmk: bool = True, status: str = "ACTIVE", version: str = "R4") -> None:
        self.datastore_id = uuid.uuid4().hex
        self.cmk, self.status, self.version = cmk, status, version
        self.resources: dict[tuple[str, str], Stored] = {}
        self.lock = threading.RLock()
        self.pages: dict[str, list[tuple[str, str, str]]] = {}
        self.throttle_share = 0.0
        self.throttled = 0
        self.random = random.Random(19)
        self.ignore_tag = False
        self.inject: list[tuple[str, tuple[str, str]]] = []  # (mode, (type, id)) added to answers
        self.requests: list[tuple[str, str]] = []  # (method, route without ids)
        self.applied: list[tuple[str, str, str]] = []  # (method, type, id) of writes applied
        self.refused_signatures = 0
        self.transactions = 0  # transaction bundles received
        self.fail_transaction_entry: int | None = None  # that entry fails (412): all undone
        self.hold_erase_after: int | None = None  # then every $erase waits for `release`
        self.fail_erase = False  # every $erase answers 500
        self.held = threading.Event()
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- lifecycle -----------------------------------------------------------------

    @property
    def origin(self) -> str:
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}"

    @property
    def endpoint(self) -> str:
        return f"{self.origin}/datastore/{self.datastore_id}/r4/"

    def start(self) -> "FakeHealthLake":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @contextmanager
    def throttling(self, share: float) -> Iterator[None]:
        self.throttle_share = share
        try:
            yield
        finally:
            self.throttle_share = 0.0

    # --- direct access for tests (what is really stored) -------------------------------

    def current(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        stored = self.resources.get((resource_type, resource_id))
        return stored.current if stored else None

    def put_raw(self, body: dict[str, Any]) -> None:
        """Store a resource as another client of the datastore would (no checks)."""
        with self.lock:
            stored = self.resources.setdefault((body["resourceType"], body["id"]), Stored())
            version = str(len(stored.versions) + 1)
            body = {**body, "meta": {**body.get("meta", {}), "versionId": version}}
            body["meta"]["lastUpdated"] = _now()
            stored.versions.append((body, "PUT", body["meta"]["lastUpdated"]))

    def live(self, tag_code: str | None = None) -> list[dict[str, Any]]:
        out = []
        for stored in self.resources.values():
            body = stored.current
            if body is None:
                continue
            codes = {t.get("code") for t in body.get("meta", {}).get("tag", [])}
            if tag_code is None or tag_code in codes:
                out.append(body)
        return out

    def kept_versions(self, tag_code: str) -> int:
        """Every stored version (history included) carrying the tenant's tag."""
        return sum(
            1
            for stored in self.resources.values()
            for body, _m, _w in stored.versions
            if body is not None
            and tag_code in {t.get("code") for t in body.get("meta", {}).get("tag", [])}
        )

    # --- signature -------------------------------------------------------------------------

    def verify(self, method: str, raw_path: str, headers: Any, body: bytes) -> bool:
        match = _AUTH.fullmatch(headers.get("Authorization", "") or "")
        if not match or match["key"] != ACCESS_KEY or match["service"] != "healthlake":
            return False
        if match["region"] != REGION:
            return False
        signed = match["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return False
        request = AWSRequest(
            method=method,
            url=f"http://{headers['Host']}{raw_path}",
            data=body,
            headers={name: headers[name] for name in signed if headers.get(name) is not None},
        )
        request.context["timestamp"] = headers["X-Amz-Date"]
        signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "healthlake", REGION)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        return hmac.compare_digest(expected, match["sig"])

    # --- the HTTP handler ----------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(
                self, status: int, body: Any = None, headers: dict[str, str] | None = None
            ) -> None:
                data = b"" if body is None else orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if not fake.verify(self.command, self.path, self.headers, body):
                    fake.refused_signatures += 1
                    self._answer(
                        403,
                        {
                            "__type": "InvalidSignatureException",
                            "message": "The request signature we calculated does not match",
                        },
                    )
                    return
                if self.path == "/" and self.headers.get("X-Amz-Target"):
                    self._answer(*fake.control(self.headers["X-Amz-Target"], body))
                    return
                prefix = f"/datastore/{fake.datastore_id}/r4/"
                if not self.path.startswith(prefix):
                    self._answer(404, _outcome("not-found", "No such datastore"))
                    return
                if fake.throttle_share and fake.random.random() < fake.throttle_share:
                    with fake.lock:
                        fake.throttled += 1
                    self._answer(429, {"__type": "ThrottlingException", "message": "Rate exceeded"})
                    return
                parts = urlsplit(self.path[len(prefix) - 1 :])
                params = parse_qsl(parts.query, keep_blank_values=True)
                if self.headers.get("Content-Type", "").startswith(
                    "application/x-www-form-urlencoded"
                ):
                    params += parse_qsl(body.decode(), keep_blank_values=True)
                    body = b""
                try:
                    status, answer, extra = fake.fhir(
                        self.command,
                        [p for p in parts.path.split("/") if p],
                        params,
                        body,
                        self.headers,
                    )
                except BadRequest as error:
                    status, answer, extra = 400, _outcome("invalid", str(error)), {}
                self._answer(status, answer, extra)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        return Handler

    # --- control plane -----------------------------------------------------------------

    def control(self, target: str, body: bytes) -> tuple[int, Any]:
        request = orjson.loads(body or b"{}")
        if target != "HealthLake.DescribeFHIRDatastore":
            return 400, {"__type": "ValidationException", "message": "unknown operation"}
        if request.get("DatastoreId") != self.datastore_id:
            return 400, {"__type": "ResourceNotFoundException", "message": "no such datastore"}
        kms: dict[str, Any] = (
            {"CmkType": "CUSTOMER_MANAGED_KMS_KEY", "KmsKeyId": "arn:aws:kms:key/test"}
            if self.cmk
            else {"CmkType": "AWS_OWNED_KMS_KEY"}
        )
        return 200, {
            "DatastoreProperties": {
                "DatastoreId": self.datastore_id,
                "DatastoreArn": f"arn:aws:healthlake:{REGION}:000000000000:datastore/fhir/x",
                "DatastoreName": "clinik-test",
                "DatastoreStatus": self.status,
                "CreatedAt": 1.7e9,
                "DatastoreTypeVersion": self.version,
                "DatastoreEndpoint": self.endpoint,
                "SseConfiguration": {"KmsEncryptionConfig": kms},
            }
        }

    # --- FHIR ------------------------------------------------------------------------------

    def fhir(
        self,
        method: str,
        parts: list[str],
        params: list[tuple[str, str]],
        body: bytes,
        headers: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        route = "/".join(
            p if i % 2 == 0 or p.startswith(("_", "$")) else "{id}" for i, p in enumerate(parts)
        )
        with self.lock:
            self.requests.append((method, route))
        if not parts and method == "POST":
            return self.bundle(body)
        if parts and parts[-1] == "_search" and method == "POST":
            return self.search(parts[0] if len(parts) == 2 else None, params)
        if method == "GET" and len(parts) <= 1:
            if parts and parts[0] == "_search":
                parts = []
            return self.search(parts[0] if parts else None, params)
        if method == "GET" and len(parts) == 2 and parts[0] == "$erase":
            return 200, {"jobId": parts[1], "status": "COMPLETED"}, {}
        resource_type, resource_id = parts[0], parts[1] if len(parts) > 1 else ""
        key = (resource_type, resource_id)
        with self.lock:
            stored = self.resources.get(key)
            if len(parts) == 3 and parts[2] == "$erase" and method == "POST":
                if self.fail_erase:
                    return 500, _outcome("exception", "Internal error"), {}
                erased = sum(1 for a in self.applied if a[0] == "ERASE")
                if self.hold_erase_after is not None and erased >= self.hold_erase_after:
                    self.held.set()
                    self.lock.release()
                    try:
                        self.release.wait(30)
                    finally:
                        self.lock.acquire()
                    return 500, _outcome("exception", "Internal error"), {}
                if stored is None:
                    return 404, _outcome("not-found", "Resource not found"), {}
                del self.resources[key]
                self.applied.append(("ERASE", resource_type, resource_id))
                return 200, {"jobId": uuid.uuid4().hex, "jobStatus": "SUBMITTED"}, {}
            if len(parts) >= 3 and parts[2] == "_history" and method == "GET":
                if stored is None:
                    return 404, _outcome("not-found", "Resource not found"), {}
                if len(parts) == 4:
                    index = int(parts[3]) - 1 if parts[3].isdigit() else -1
                    if not 0 <= index < len(stored.versions):
                        return 404, _outcome("not-found", "Version not found"), {}
                    found = stored.versions[index][0]
                    if found is None:
                        return 410, _outcome("deleted", "Resource deleted"), {}
                    return 200, found, {}
                return 200, self._history(key, stored, params), {}
            if len(parts) != 2:
                raise BadRequest("unsupported path")
            if method == "GET":
                if stored is None:
                    return 404, _outcome("not-found", "Resource not found"), {}
                if stored.current is None:
                    return 410, _outcome("deleted", "Resource deleted"), {}
                return 200, stored.current, {}
            if method == "PUT":
                return self._put(key, stored, body, headers)
            if method == "DELETE":
                if stored is None or stored.current is None:
                    return 404, _outcome("not-found", "Resource not found"), {}
                stored.versions.append((None, "DELETE", _now()))
                self.applied.append(("DELETE", resource_type, resource_id))
                return 204, None, {}
        raise BadRequest("unsupported interaction")

    def _put(
        self, key: tuple[str, str], stored: Stored | None, body: bytes, headers: Any
    ) -> tuple[int, Any, dict[str, str]]:
        document = orjson.loads(body)
        if document.get("resourceType") != key[0] or document.get("id") != key[1]:
            raise BadRequest("resource type and id must match the URL")
        if_match = headers.get("If-Match")
        current_version = len(stored.versions) if stored else 0
        if if_match is not None and if_match != f'W/"{current_version}"':
            return 412, _outcome("conflict", "Version mismatch"), {}
        stored = self.resources.setdefault(key, Stored())
        created = stored.current is None and not stored.versions
        meta = dict(document.get("meta") or {})
        meta["versionId"] = str(len(stored.versions) + 1)
        meta["lastUpdated"] = _now()
        document["meta"] = meta
        stored.versions.append((document, "POST" if created else "PUT", meta["lastUpdated"]))
        self.applied.append(("PUT", key[0], key[1]))
        return 201 if created else 200, document, {"ETag": f'W/"{meta["versionId"]}"'}

    # --- transaction bundles (POST to the base) ------------------------------------------

    def bundle(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        """A transaction bundle as HealthLake documents it: at most MAX_BUNDLE_ENTRIES
        entries, processed in the order given, all or nothing; POST entries get new
        ids and every reference to their `urn:uuid:` fullUrl is rewritten; PUT honours
        `ifMatch`; DELETE; GET reads. Anything failing undoes every entry (400, or the
        failing entry's status for a precondition) and answers one OperationOutcome."""
        bundle = orjson.loads(body)
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise BadRequest("only transaction bundles here")
        entries = bundle.get("entry") or []
        if len(entries) > MAX_BUNDLE_ENTRIES:
            raise BadRequest(f"a bundle holds at most {MAX_BUNDLE_ENTRIES} resources")
        with self.lock:
            self.transactions += 1
            saved = {key: list(stored.versions) for key, stored in self.resources.items()}
            applied = len(self.applied)
            try:
                return 200, self._transaction(entries), {}
            except _EntryFailed as failed:
                self.resources = {}
                for key, versions in saved.items():
                    self.resources[key] = Stored()
                    self.resources[key].versions = versions
                del self.applied[applied:]
                return failed.status, _outcome(failed.code, str(failed)), {}

    def _transaction(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        new_ids = {}
        for entry in entries:
            request = entry.get("request") or {}
            full_url = str(entry.get("fullUrl") or "")
            if request.get("method") == "POST" and full_url.startswith("urn:uuid:"):
                new_ids[full_url] = f"{entry['resource']['resourceType']}/{uuid.uuid4()}"
        answers = []
        for index, entry in enumerate(entries):
            request = entry.get("request") or {}
            method = str(request.get("method", ""))
            url = str(request.get("url", ""))
            if self.fail_transaction_entry == index:
                raise _EntryFailed(412, "conflict", f"entry {index}: version mismatch")
            resource = _rewritten(entry.get("resource"), new_ids)
            if method == "POST":
                target = new_ids.get(str(entry.get("fullUrl"))) or f"{url}/{uuid.uuid4()}"
                resource = {**resource, "id": target.split("/")[1]}
                method, url = "PUT", target
            parts = url.split("/")
            if len(parts) != 2:
                raise _EntryFailed(400, "invalid", f"entry {index}: unsupported url")
            key = (parts[0], parts[1])
            stored = self.resources.get(key)
            if method == "PUT":
                headers = {"If-Match": request["ifMatch"]} if request.get("ifMatch") else {}
                status, answer, extra = self._put(key, stored, orjson.dumps(resource), headers)
                if status >= 400:
                    raise _EntryFailed(status, "conflict", f"entry {index}: version mismatch")
                answers.append(
                    {
                        "resource": answer,
                        "response": {
                            "status": f"{status} {'Created' if status == 201 else 'OK'}",
                            "location": f"{url}/_history/{answer['meta']['versionId']}",
                            "etag": extra["ETag"],
                            "lastModified": answer["meta"]["lastUpdated"],
                        },
                    }
                )
            elif method == "DELETE":
                if stored is not None and stored.current is not None:
                    stored.versions.append((None, "DELETE", _now()))
                    self.applied.append(("DELETE", key[0], key[1]))
                answers.append({"response": {"status": "204 No Content"}})
            elif method == "GET" and stored is not None and stored.current is not None:
                answers.append({"resource": stored.current, "response": {"status": "200 OK"}})
            else:
                raise _EntryFailed(404 if method == "GET" else 400, "not-found", f"entry {index}")
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}

    def _history(
        self, key: tuple[str, str], stored: Stored, params: list[tuple[str, str]]
    ) -> dict[str, Any]:
        count = _count(params)
        entries = []
        for index in range(len(stored.versions) - 1, -1, -1):
            body, method, when = stored.versions[index]
            entry: dict[str, Any] = {
                "fullUrl": f"{self.endpoint}{key[0]}/{key[1]}",
                "request": {"method": method, "url": f"{key[0]}/{key[1]}"},
                "response": {"etag": f'W/"{index + 1}"', "lastModified": when},
            }
            if body is not None:
                entry["resource"] = body
            entries.append(entry)
        return {"resourceType": "Bundle", "type": "history", "entry": entries[:count]}

    # --- search ----------------------------------------------------------------------------------

    def search(
        self, resource_type: str | None, params: list[tuple[str, str]]
    ) -> tuple[int, Any, dict[str, str]]:
        page = next((v for n, v in params if n == "page"), None)
        count = _count(params)
        if page is not None:
            hits = self.pages.get(page)
            if hits is None:
                raise BadRequest("unknown page")
            return 200, self._bundle(hits[:count], hits[count:], params, count), {}
        types = [resource_type] if resource_type else []
        for name, value in params:
            if name == "_type":
                types = value.split(",")
        if not types:
            raise BadRequest("a system search needs _type here")
        criteria = [
            (n, v)
            for n, v in params
            if n not in ("_count", "_type", "_include", "_revinclude", "_summary", "page")
        ]
        with self.lock:
            hits = [
                ("match", t, rid)
                for (t, rid), stored in sorted(self.resources.items())
                if t in types
                and stored.current is not None
                and all(self._matches(stored.current, n, v) for n, v in criteria)
            ]
            if any(n == "_summary" and v == "count" for n, v in params):
                return 200, {"resourceType": "Bundle", "type": "searchset", "total": len(hits)}, {}
            matched = [(t, rid) for _m, t, rid in hits]
            for name, value in params:
                if name in ("_include", "_revinclude"):
                    hits += [
                        ("include", t, rid)
                        for t, rid in self._included(name, value, matched)
                        if ("include", t, rid) not in hits and ("match", t, rid) not in hits
                    ]
            for mode, (t, rid) in self.inject:
                hits.insert(0, (mode, t, rid))
        return 200, self._bundle(hits[:count], hits[count:], params, count), {}

    def _bundle(
        self,
        hits: list[tuple[str, str, str]],
        rest: list[tuple[str, str, str]],
        params: list[tuple[str, str]],
        count: int,
    ) -> dict[str, Any]:
        entries = []
        for mode, t, rid in hits:
            stored = self.resources.get((t, rid))
            if stored is None or stored.current is None:
                continue
            entries.append(
                {
                    "fullUrl": f"{self.endpoint}{t}/{rid}",
                    "resource": stored.current,
                    "search": {"mode": mode},
                }
            )
        links = []
        if rest:
            token = uuid.uuid4().hex
            self.pages[token] = rest
            links.append(
                {"relation": "next", "url": f"{self.endpoint}?_count={count}&page={token}"}
            )
        return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}

    def _included(
        self, name: str, value: str, matched: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        source_type, code = value.split(":")[:2]
        spec = PARAMS.get((source_type, code))
        if spec is None or spec[0] != "reference":
            raise BadRequest("unsupported include")
        found = []
        if name == "_include":
            for t, rid in matched:
                body = self.resources[(t, rid)].current
                for path in spec[1]:
                    for ref in _values(body, path):
                        target = tuple(str(ref.get("reference", "")).split("/")[-2:])
                        if len(target) == 2 and self.current(*target) is not None:
                            found.append(target)
        else:
            wanted = {f"{t}/{rid}" for t, rid in matched}
            for (t, rid), stored in sorted(self.resources.items()):
                if t != source_type or stored.current is None:
                    continue
                refs = [r.get("reference") for p in spec[1] for r in _values(stored.current, p)]
                if wanted & set(refs):
                    found.append((t, rid))
        return found

    def _matches(self, body: dict[str, Any], name: str, value: str) -> bool:
        resource_type = body["resourceType"]
        if name.startswith("_has:"):
            _has, source_type, code, rest = name.split(":", 3)
            spec = PARAMS.get((source_type, code))
            if spec is None:
                raise BadRequest("unsupported _has")
            me = f"{resource_type}/{body['id']}"
            for (t, _rid), stored in list(self.resources.items()):
                if t != source_type or stored.current is None:
                    continue
                refs = [r.get("reference") for p in spec[1] for r in _values(stored.current, p)]
                if me in refs and self._matches(stored.current, rest, value):
                    return True
            return False
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        spec = PARAMS.get((resource_type, code)) or PARAMS.get(("*", code))
        if spec is None:
            raise BadRequest(f"unsupported search parameter {code}")
        kind, paths = spec
        if kind == "token" and code == "_tag" and self.ignore_tag:
            return True
        if dot:
            if kind != "reference":
                raise BadRequest("chain on a non-reference")
            for path in paths:
                for ref in _values(body, path):
                    target = str(ref.get("reference", "")).split("/")
                    if len(target) != 2 or (modifier and target[0] != modifier):
                        continue
                    other = self.current(target[0], target[1])
                    if other is not None and self._matches(other, rest, value):
                        return True
            return False
        options = value.split(",")
        if kind == "id":
            return body["id"] in options
        found = [v for path in paths for v in _values(body, path)]
        for option in options:
            if kind == "string" and any(
                isinstance(v, str) and v.lower().startswith(option.lower()) for v in found
            ):
                return True
            if kind == "token":
                system, bar, code_value = option.rpartition("|")
                for v in found:
                    if isinstance(v, str) and not bar and v == option:
                        return True
                    if isinstance(v, dict):
                        v_code = v.get("code", v.get("value"))
                        if v_code == code_value and (not bar or v.get("system") == system):
                            return True
            if kind == "reference" and any(
                isinstance(v, dict) and v.get("reference") in (option, *_suffixes(option))
                for v in found
            ):
                return True
            if kind == "date":
                prefix, moment = ("eq", option)
                if option[:2].isalpha():
                    prefix, moment = option[:2], option[2:]
                for v in found:
                    if not isinstance(v, str):
                        continue
                    if prefix == "eq" and v.startswith(moment):
                        return True
                    if prefix in ("gt", "ge") and v >= moment:
                        return True
                    if prefix in ("lt", "le") and v <= moment:
                        return True
        return False


def _suffixes(option: str) -> tuple[str, ...]:
    return tuple(f"{t}/{option}" for t in ("Patient", "Organization")) if "/" not in option else ()


class BadRequest(Exception):
    pass


class _EntryFailed(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _rewritten(node: Any, new_ids: dict[str, str]) -> Any:
    """A copy of the resource with every reference to a new entry's fullUrl rewritten."""
    if isinstance(node, dict):
        return {
            k: new_ids.get(v, v)
            if k == "reference" and isinstance(v, str)
            else _rewritten(v, new_ids)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewritten(item, new_ids) for item in node]
    return node


def _count(params: list[tuple[str, str]]) -> int:
    raw = next((v for n, v in params if n == "_count"), "100")
    if not raw.isdigit():
        raise BadRequest("_count must be a number")
    if int(raw) > MAX_COUNT:
        raise BadRequest("_count must be at most 100")
    return int(raw)


def _outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
