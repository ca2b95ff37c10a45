"""walctl: the operator's tool for a walnode data directory, used offline.

    walctl info DIR                 what the directory holds (read-only)
    walctl dump DIR [--from N]      print entries as JSON lines (read-only)
    walctl verify DIR               check every record, report every bad one
    walctl repair DIR [--yes]       mark lost records in place, cut a torn tail
    walctl keygen KEYDIR            CURVE keys for tcp deployments (docs/DEPLOY.md)
    walctl crashtest [--kills N]    kill a live walnode's processes under load;
                                    check nothing acknowledged is lost
    walctl crashtest --power-loss   cut the power under a traced load (a disk
                                    model), restart walnode on what it kept
    walctl crashtest --cluster      etcd, 3 replicas, 2 fronts: kill, freeze,
                                    isolate the leader; check every replica
    walctl bench [--quick]          appends/s and latency of a live walnode and its peers
    walctl bench --cluster          3 replicas beside the single node; failover

info, dump and verify open the log read-only: nothing is cut, created or
changed, so they are safe beside a running walnode. repair takes the
directory's lock, so it refuses to run while walnode uses the directory.
crashtest starts a walnode of its own (docs/CRASHTEST.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys

from wal import CorruptionError, DataDir, DirectoryLocked, Log, WalError, crc_hex, repair


def _datadir(path: str) -> DataDir:
    datadir = DataDir(path, create=False)
    if not os.path.isdir(datadir.wal_dir):
        raise WalError(f"{path} is not a walnode data directory (it has no wal/ folder)")
    return datadir


def open_readonly(path: str) -> tuple[DataDir, Log, dict, object]:
    datadir = _datadir(path)
    meta = datadir.read_meta()
    log, report = Log.open(datadir.wal_dir, readonly=True)
    return datadir, log, meta, report


def cmd_info(args: argparse.Namespace) -> int:
    datadir, log, meta, report = open_readonly(args.dir)
    try:
        info = {
            "data_dir": datadir.path,
            "node_id": meta.get("node_id"),
            "max_segment_bytes": meta.get("max_segment_bytes"),
            "entries": log.entries,
            "first_offset": log.first_offset,
            "next_offset": log.next_offset,
            "total_bytes": log.total_bytes,
            "segments": [s.__dict__ for s in log.segments()],
            "torn_tail": None
            if not report.bytes_truncated
            else {
                "file": report.truncated_file,
                "at_byte": report.truncated_at,
                "bytes": report.bytes_truncated,
                "reason": report.truncation_reason,
                "note": "never acknowledged; walnode cuts it at its next start",
            },
        }
    finally:
        log.close()
    print(json.dumps(info, indent=2))
    return 0


def _offset(text: str) -> int:
    """argparse's type= for an offset: an integer >= 0 in ASCII digits."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be an offset, an integer >= 0, got {text!r}")
    return int(text)


def cmd_dump(args: argparse.Namespace) -> int:
    _, log, _, _ = open_readonly(args.dir)
    try:
        offset = max(args.from_offset, log.first_offset)
        while offset < log.next_offset:
            for e in log.scan(offset, 1000, 4 << 20):
                line = {
                    "offset": e.offset,
                    "payload": e.payload.decode("utf-8", "replace"),
                    "checksum": crc_hex(e.crc),
                    "checksum_valid": e.checksum_valid,
                }
                if e.epoch_start is not None:
                    line["epoch_start"] = e.epoch_start
                sys.stdout.write(json.dumps(line) + "\n")
                offset = e.offset + 1
    finally:
        log.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    datadir = _datadir(args.dir)
    file_problems, _, _ = repair.check_files(datadir)
    for text in file_problems:
        print(f"CORRUPT: {text}")
    lost: list[int] = []
    problems, valid = repair.verify(datadir.wal_dir, lost)
    for p in problems:
        resumes = (
            "nothing valid after it"
            if p.resumes_at is None
            else (f"valid records resume at byte {p.resumes_at}")
        )
        kind = "torn tail (walnode cuts it at start)" if p.torn_tail else "CORRUPT"
        held = (
            ""
            if p.torn_tail
            else f"; entry {p.offset}"
            + (f" to {p.offset + p.records - 1}" if p.records > 1 else "")
        )
        print(f"{kind}: {p.file} at byte {p.position}: {p.reason}{held}; {resumes}")
    if lost:
        print(f"lost entries (marked by an earlier walctl repair): {lost}")
    bad = [p for p in problems if not p.torn_tail]
    print(
        f"{valid} valid records; {len(bad) + len(file_problems)} corrupt region(s), "
        f"{len(problems) - len(bad)} torn tail(s)"
    )
    if bad or file_problems:
        print(f"to see what repair would do (it moves no offset): walctl repair {args.dir}")
        return 3
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    datadir = _datadir(args.dir)
    datadir.lock(f"walctl repair pid {os.getpid()}")
    todo = repair.plan(datadir)
    if not todo:
        print("nothing to repair: every record is valid")
        return 0
    for path, _content, why in todo.rewrites:
        print(f"rewrite {path}: {why}")
    for mk in todo.markings:
        entries = f"entry {mk.first_offset}" + (
            f" to {mk.first_offset + mk.count - 1}" if mk.count > 1 else ""
        )
        where = (
            f"create {mk.file}"
            if mk.create
            else f"overwrite bytes {mk.start} to {mk.end} of {mk.file}"
        )
        print(f"{where} with lost-record markers for {entries} ({mk.why})")
    if todo.cut is not None:
        path, keep, remove = todo.cut
        print(f"cut a torn tail (never acknowledged): {remove} bytes of {path} from byte {keep} on")
    for text in todo.refusals:
        print(f"cannot repair: {text}")
    if todo.refusals:
        return 3
    print("every valid record keeps its offset; the lost ones read back as errors naming the loss")
    if not args.yes:
        print("nothing changed; run again with --yes to do it")
        return 1
    repair.apply(todo)
    print("repaired")
    return 0


# Tools that bring their own flags and run: name -> (module, one-line summary).
TOOLS = {
    "keygen": ("walctl.keygen", "make CURVE keys for tcp deployments (DEPLOY.md)"),
    "crashtest": (
        "walctl.crashtest",
        "kill a live walnode's processes under load; check nothing acknowledged is lost",
    ),
    "bench": (
        "walctl.bench.cli",
        "durable appends/s and latency of a live walnode beside sqlite3, lmdb, fsync...",
    ),
}


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="walctl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="summarise a data directory")
    info.add_argument("dir")
    info.set_defaults(func=cmd_info)
    dump = sub.add_parser("dump", help="print entries as JSON lines")
    dump.add_argument("dir")
    dump.add_argument("--from", dest="from_offset", type=_offset, default=0, metavar="OFFSET")
    dump.set_defaults(func=cmd_dump)
    verify = sub.add_parser("verify", help="check every record; exit 3 if any is corrupt")
    verify.add_argument("dir")
    verify.set_defaults(func=cmd_verify)
    fix = sub.add_parser(
        "repair", help="replace unreadable records with lost-record markers, keeping offsets"
    )
    fix.add_argument("dir")
    fix.add_argument("--yes", action="store_true", help="really remove what is listed")
    fix.set_defaults(func=cmd_repair)
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if a[:1] != "-"), None)
    for name, (module, summary) in TOOLS.items():
        tool_parser = sub.add_parser(name, help=summary)
        if name == command:  # a tool's module (and what it imports) loads only when it runs
            tool = importlib.import_module(module)
            paragraphs = tool.__doc__.split("\n\n")  # the first names the command
            tool_parser.description = paragraphs[min(1, len(paragraphs) - 1)].replace("\n", " ")
            tool.add_arguments(tool_parser)
            tool_parser.set_defaults(func=tool.run)
    args = p.parse_args(argv)
    if sys.stdout is None:  # started with fd 1 closed (`walctl dump DIR >&-`)
        print(f"walctl {args.command}: stdout is closed; run it with stdout open", file=sys.stderr)
        return 2
    if args.command in ("crashtest", "bench"):
        # They start walnodes, a cluster and etcd in sessions of their own, which a
        # plain SIGTERM of walctl would orphan: raised as SystemExit, it runs the
        # tools' cleanup (their `finally` stops and reaps what they started).
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return args.func(args)
    except DirectoryLocked as err:
        print(f"walctl: {err}", file=sys.stderr)
        return 2
    except CorruptionError as err:
        print(f"walctl: {err}", file=sys.stderr)
        return 3
    except BrokenPipeError:
        # the reader went away (`walctl dump DIR | head`): what it wanted was
        # printed. Point stdout at /dev/null so the flush at exit cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (WalError, OSError) as err:
        print(f"walctl: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
