"""A minimal client for etcd's v3 JSON gateway (POST /v3/...), over urllib.

Only what the election needs: lease grant / keep-alive / revoke, a transaction that creates a key
bound to a lease only if it is absent, and reading a key. etcd's gateway speaks JSON with keys and
values in base64 and 64-bit integers as strings; this module hides both.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass


class EtcdError(Exception):
    """etcd refused a request or could not be reached; the text says which and why."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd returns it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_value(raw: dict) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw["key"]),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


class EtcdClient:
    """Requests to one etcd endpoint such as `http://127.0.0.1:2379`, each with a timeout."""

    def __init__(self, endpoint: str, timeout: float = 1.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout

    def call(self, path: str, body: dict) -> dict:
        """POST `body` to /v3/`path`; the decoded reply, or EtcdError."""
        request = urllib.request.Request(
            f"{self.endpoint}/v3/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise EtcdError(f"etcd at {self.endpoint} refused {path}: {detail}") from error
        except (OSError, ValueError) as error:
            raise EtcdError(
                f"etcd at {self.endpoint} did not answer {path} ({error}); "
                "check that etcd runs there and is reachable"
            ) from error

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of `ttl` seconds: (lease id, the TTL etcd granted)."""
        reply = self.call("lease/grant", {"TTL": ttl})
        return int(reply["ID"]), int(reply["TTL"])

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease; the TTL it has again, 0 if etcd no longer knows it (expired)."""
        reply = self.call("lease/keepalive", {"ID": str(lease_id)})
        return int(reply.get("result", {}).get("TTL", 0))

    def lease_revoke(self, lease_id: int) -> None:
        """End the lease now; every key bound to it is deleted. An unknown lease is no error."""
        try:
            self.call("lease/revoke", {"ID": str(lease_id)})
        except EtcdError as error:
            if "lease not found" not in str(error):
                raise

    def create_if_absent(self, key: bytes, value: bytes, lease_id: int) -> tuple[bool, KeyValue]:
        """One transaction: put `key` bound to the lease only if the key does not exist.

        Returns (True, the key as created) or (False, the key another holds). A created key's
        create_revision is the transaction's revision.
        """
        encoded = _b64(key)
        reply = self.call(
            "kv/txn",
            {
                "compare": [
                    {"key": encoded, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
                ],
                "success": [
                    {"request_put": {"key": encoded, "value": _b64(value), "lease": str(lease_id)}}
                ],
                "failure": [{"request_range": {"key": encoded}}],
            },
        )
        if reply.get("succeeded"):
            revision = int(reply["header"]["revision"])
            return True, KeyValue(key, value, revision, revision, lease_id)
        kvs = reply["responses"][0]["response_range"].get("kvs", [])
        if not kvs:  # deleted between the compare and the range: nobody holds it now
            return False, KeyValue(key, b"", 0, 0, 0)
        return False, _key_value(kvs[0])

    def get(self, key: bytes) -> KeyValue | None:
        """The key, or None if it does not exist."""
        kvs = self.call("kv/range", {"key": _b64(key)}).get("kvs", [])
        return _key_value(kvs[0]) if kvs else None

    def put(self, key: bytes, value: bytes) -> None:
        """Set `key` (bound to no lease: it stays until deleted)."""
        self.call("kv/put", {"key": _b64(key), "value": _b64(value)})

    def get_prefix(self, prefix: bytes) -> list[KeyValue]:
        """Every key that starts with `prefix`, in key order."""
        end = prefix[:-1] + bytes([prefix[-1] + 1])  # etcd's range end for a prefix
        kvs = self.call("kv/range", {"key": _b64(prefix), "range_end": _b64(end)}).get("kvs", [])
        return [_key_value(raw) for raw in kvs]

    def delete(self, key: bytes) -> None:
        self.call("kv/deleterange", {"key": _b64(key)})

    def healthy(self) -> bool:
        """True when etcd answers /health with health true."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=self.timeout) as reply:
                return json.loads(reply.read()).get("health") == "true"
        except (OSError, ValueError):
            return False
