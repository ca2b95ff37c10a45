"""walnode's Python client: drive a walnode over its pipes (docs/CLIENT.md).

from walnode import Client
with Client.spawn(data_dir="/var/lib/walnode") as c:
    a = c.append("set x=1")          # a.offset, a.checksum, a.length
    c.read(a.offset).payload         # "set x=1"
"""

from walnode.client import (
    Appended,
    Client,
    Compacted,
    Entry,
    Info,
    KvValue,
    LeanPipes,
    ProcessInfo,
    ScanResult,
    Snapshot,
    Status,
    WalnodeError,
    WalnodeExited,
    node_command,
)

__all__ = [
    "Appended",
    "Client",
    "Compacted",
    "Entry",
    "Info",
    "KvValue",
    "LeanPipes",
    "ProcessInfo",
    "ScanResult",
    "Snapshot",
    "Status",
    "WalnodeError",
    "WalnodeExited",
    "node_command",
]
