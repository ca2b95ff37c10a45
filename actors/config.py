"""Each process's configuration, declared once: a frozen dataclass per role.

A field's metadata says how it appears on the command line (flag, help,
range), so the same declaration gives `walnode`'s flags (node.py), the
argv the supervisor starts a child with (`argv()`), and the child's parsing
of it (`add_flags` + `from_args`). A value outside its range stops the
process in argparse, before anything starts: exit 2 (argparse's status,
which is Exit.USAGE), naming the flag and the range.
"""

from __future__ import annotations

import argparse
import math
import re
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from actors.sockets import Remote
from wal.datadir import MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES  # the range is the log's own

if typing.TYPE_CHECKING:
    from actors.leader import LeaderSource
    from actors.metrics import ListenAddress

MiB = 1 << 20
GiB = 1 << 30
MAX_PAYLOAD_BYTES = 64 * MiB  # a record's payload, escaped as JSON, must fit a line
MAX_SECONDS = 24 * 3600.0
# --fsync interval:MSms: at least every millisecond, at most an hour apart (a
# longer wait is `never` in all but name; an unbounded one overflows the poll)
FSYNC_INTERVAL_MS = (1, 3_600_000)
# A payload within --max-payload-bytes fits a request line this long whatever
# its JSON escaping (\u0000 is 6 bytes for 1), with room for the envelope.
LINE_ENVELOPE_BYTES = 64 << 10


@dataclass(frozen=True)
class FsyncPolicy:
    """`always`, `interval:MSms` or `never` (see PROTOCOL.md)."""

    name: str
    interval_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> FsyncPolicy:
        if text == "always" or text == "never":
            return cls(text)
        low, high = FSYNC_INTERVAL_MS
        match = re.fullmatch(r"interval:([0-9]+)ms", text)  # ASCII digits only, as \d is not
        if match and low <= int(match.group(1)) <= high:
            return cls(text, int(match.group(1)) / 1000)
        raise ValueError(
            f"--fsync must be always, never or interval:MSms with MS between {low} and {high} "
            f"(1 ms to an hour), got {text!r}"
        )

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Flag:
    """How one configuration field is given on the command line."""

    help: str
    minimum: float | None = None  # the range, inclusive; a float range for seconds
    maximum: float | None = None
    shown: str = ""  # the range in words, for a person ("64 B to 1 GiB")
    off: str | None = None  # a bool field that defaults to on: the flag that turns it off


def setting(default: Any, help: str, **flag: Any) -> Any:
    """A configuration field with its default and its command-line flag."""
    return field(default=default, metadata={"flag": Flag(help, **flag)})


def _number(kind: type, flag: str, spec: Flag) -> typing.Callable[[str], Any]:
    """argparse's type= for a number with a range: exit 2 naming both."""

    def parse(text: str) -> Any:
        try:
            if not text.isascii():  # int() and float() read any script's digits: "٦٤" is 64
                raise ValueError(text)
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a number'} {range_text(spec)}, "
                f"got {text!r}"
            ) from None
        low = -math.inf if spec.minimum is None else spec.minimum
        high = math.inf if spec.maximum is None else spec.maximum
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be {range_text(spec)}, got {text}")
        return value

    parse.__name__ = flag  # argparse names the type in some messages
    return parse


def range_text(spec: Flag) -> str:
    """The range as a flag's error and help say it: "between 64 and ... (64 B to 1 GiB)"."""
    if spec.maximum is None:
        text = f"at least {spec.minimum!r}"
    else:
        text = f"between {spec.minimum!r} and {spec.maximum!r}"
    return f"{text} ({spec.shown})" if spec.shown else text


def _fsync_policy(text: str) -> FsyncPolicy:
    try:
        return FsyncPolicy.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


C = TypeVar("C", bound="RoleConfig")


@dataclass(frozen=True)
class RoleConfig:
    """What the fields of every role's configuration share: flags, argv, parsing."""

    role: ClassVar[str]

    @classmethod
    def _flags(cls) -> typing.Iterator[tuple[str, Flag, Any, Any]]:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            spec = f.metadata.get("flag")
            if spec is not None:
                default = f.default if f.default is not MISSING else None
                yield f.name, spec, hints[f.name], default

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """This role's flags, with their defaults and ranges."""
        for name, spec, hint, default in cls._flags():
            flag = "--" + name.replace("_", "-")
            if hint is bool:
                off = str(spec.off)  # every bool setting defaults to on
                parser.add_argument(off, dest=name, action="store_false", help=spec.help)
                continue
            kind = int if hint in (int, int | None) else float if hint is float else None
            if hint is FsyncPolicy:
                parse: Any = _fsync_policy
            elif kind is not None:
                parse = _number(kind, flag, spec)
            else:
                parse = str
            notes = [range_text(spec)] if kind is not None else []
            notes += [f"default {default}"] if default is not None else []
            help_text = f"{spec.help} [{'; '.join(notes)}]" if notes else spec.help
            metavar = {int: "N", float: "S"}.get(kind) if kind else name.upper()
            parser.add_argument(flag, type=parse, default=default, help=help_text, metavar=metavar)

    @classmethod
    def from_args(cls: type[C], args: argparse.Namespace) -> C:
        return cls(**{name: getattr(args, name) for name, *_ in cls._flags()})

    def argv(self) -> list[str]:
        """The flags that give a child process this configuration."""
        out: list[str] = []
        for name, spec, hint, _ in self._flags():
            value = getattr(self, name)
            if hint is bool:
                out += [] if value else [str(spec.off)]
            elif value is not None:
                out += ["--" + name.replace("_", "-"), repr(value) if hint is float else str(value)]
        return out


@dataclass(frozen=True)
class WriterConfig(RoleConfig):
    role: ClassVar[str] = "writer"
    fsync: FsyncPolicy = setting(
        FsyncPolicy("always"),
        "always: ack after fsync, group commit; interval:MSms: ack after write, fsync at "
        "least every MS ms; never: ack after write",
    )
    max_segment_bytes: int | None = setting(
        None,
        "roll segments at this size (default: the directory's saved setting, else 64 MiB)",
        minimum=MIN_SEGMENT_BYTES,
        maximum=MAX_SEGMENT_BYTES,
        shown="64 B to 1 GiB",
    )


@dataclass(frozen=True)
class CompactorConfig(RoleConfig):
    role: ClassVar[str] = "compactor"
    snapshot_every: int = setting(
        100_000,
        "take a snapshot automatically every N durable entries (etcd's default)",
        minimum=1,
    )
    snapshot_every_bytes: int = setting(
        64 * MiB,
        "... or every B bytes of appended records, whichever comes first",
        minimum=1,
    )
    keep_entries: int = setting(
        5_000,
        "after an automatic snapshot, delete whole segments more than R entries behind it",
        minimum=0,
    )
    keep_snapshots: int = setting(
        3,
        "snapshot files kept; older ones are deleted",
        minimum=1,
        # why, in the refusal: the log is compacted below the oldest snapshot kept
        shown="the log is compacted below the snapshots kept, so with none the state is lost",
    )
    auto_compact: bool = setting(
        True, "no automatic snapshots or compaction", off="--no-auto-compact"
    )


@dataclass(frozen=True)
class FrontConfig(RoleConfig):
    role: ClassVar[str] = "front"
    max_payload_bytes: int = setting(
        MiB,
        "larger payloads get error 12",
        minimum=1,
        maximum=MAX_PAYLOAD_BYTES,
        shown="1 B to 64 MiB",
    )
    request_timeout: float = setting(
        10.0,
        "seconds to wait for the writer before answering error 0 (timeout)",
        minimum=0.01,
        maximum=MAX_SECONDS,
        shown="10 ms to a day",
    )
    unavailable_wait: float = setting(
        2.0,
        "seconds a request waits for a restarting writer before error 11",
        minimum=0.0,
        maximum=MAX_SECONDS,
        shown="up to a day",
    )
    max_line_bytes: int | None = setting(
        None,
        "longer request lines are refused (error 12) as they stream in, never held whole "
        "(default: 6 x --max-payload-bytes + 64 KiB, room for any JSON escaping)",
        minimum=4096,
        maximum=1 << 32,
        shown="4 KiB to 4 GiB",
    )

    @property
    def line_limit(self) -> int:
        """--max-line-bytes, or its default for --max-payload-bytes."""
        if self.max_line_bytes is not None:
            return self.max_line_bytes
        return 6 * self.max_payload_bytes + LINE_ENVELOPE_BYTES


@dataclass(frozen=True)
class SupervisorConfig(RoleConfig):
    role: ClassVar[str] = "supervisor"
    max_restarts: int = setting(
        10,
        "a role restarted more than N times within --restart-window stops the node",
        minimum=0,
    )
    restart_window: float = setting(
        10.0,
        "seconds over which --max-restarts is counted",
        minimum=0.01,
        maximum=MAX_SECONDS,
        shown="10 ms to a day",
    )
    stop_timeout: float = setting(
        10.0,
        "on SIGTERM/SIGINT/SIGHUP, seconds to answer every request read before stopping "
        "at once (a second signal stops at once)",
        minimum=0.01,
        maximum=3600.0,
        shown="10 ms to an hour",
    )


ACKS = ("quorum", "all")
MAX_CLUSTER_SIZE = 7


@dataclass(frozen=True)
class ClusterConfig(RoleConfig):
    """A replica of a replicated log (docs/REPLICATION.md); `cluster` None: no replication."""

    role: ClassVar[str] = "cluster"
    cluster: str | None = setting(
        None,
        "this log side is a replica of cluster NAME (with etcd); a front (--roles front) "
        "follows NAME's leader instead of --connect",
    )
    coordinator: str | None = setting(None, "etcd's client URL, e.g. http://127.0.0.1:2379")
    replica_id: str | None = setting(None, "this replica's id in the cluster (unique, stable)")
    lease_ttl: int = setting(
        2,
        "seconds of the leader's etcd lease: a dead leader is replaced after about this long",
        minimum=1,
        maximum=60,
        shown="1 s (etcd's minimum) to a minute",
    )
    cluster_size: int = setting(
        3,
        "replicas in the cluster (odd); an append is acknowledged once a majority has it",
        minimum=1,
        maximum=MAX_CLUSTER_SIZE,
        shown="odd: 1, 3, 5 or 7",
    )
    acks: str = setting(
        "quorum", "quorum: acknowledge once a majority has an entry durably; all: every replica"
    )

    @property
    def enabled(self) -> bool:
        return self.cluster is not None


ROLE_CONFIGS: tuple[type[RoleConfig], ...] = (
    WriterConfig,
    CompactorConfig,
    FrontConfig,
    SupervisorConfig,
    ClusterConfig,
)


@dataclass(frozen=True)
class NodeConfig:
    """What one walnode runs: which roles, each one's configuration, and how
    they reach across hosts (docs/DEPLOY.md)."""

    roles: frozenset[str]
    data_dir: str | None  # None: a fresh directory per run (where the writer runs)
    writer: WriterConfig
    compactor: CompactorConfig
    front: FrontConfig
    supervisor: SupervisorConfig
    cluster: ClusterConfig = ClusterConfig()
    listen: Remote | None = None  # the log side serves remote fronts there
    connect: Remote | None = None  # a front alone, whose log side listens there
    follow: LeaderSource | None = None  # a front alone, following a cluster's leader
    metrics_listen: ListenAddress | None = None  # --metrics-listen: serve /metrics there


# -- how a child process is started: what it needs besides its configuration


def add_process_flags(parser: argparse.ArgumentParser, *, data_dir: bool) -> None:
    """The flags every child gets from the supervisor (process_argv)."""
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    if data_dir:
        parser.add_argument("--data-dir", required=True)


def process_argv(run_dir: str, parent_pid: int, data_dir: str | None = None) -> list[str]:
    argv = ["--run-dir", run_dir, "--parent-pid", str(parent_pid)]
    return argv + (["--data-dir", data_dir] if data_dir is not None else [])
