"""walctl: the operator's tool for a walnode data directory, used offline.

    walctl info DIR                 what the directory holds (read-only)
    walctl dump DIR [--from N]      print entries as JSON lines (read-only)
    walctl verify DIR               check every record, report every bad one
    walctl repair DIR [--yes]       keep the longest valid prefix
    walctl keygen KEYDIR            CURVE keys for tcp deployments (docs/DEPLOY.md)
    walctl crashtest [--kills N]    kill a live walnode's processes under load;
                                    check nothing acknowledged is lost
    walctl crashtest --power-loss   cut the power under a traced load (a disk
                                    model), restart walnode on what it kept
    walctl bench [--quick]          appends/s and latency of a live walnode and its peers

info, dump and verify open the log read-only: nothing is cut, created or
changed, so they are safe beside a running walnode. repair takes the
directory's lock, so it refuses to run while walnode uses the directory.
crashtest starts a walnode of its own (docs/CRASHTEST.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import crashtest
from bench import cli as bench_cli
from wal import CorruptionError, DataDir, DirectoryLocked, Log, WalError, crc_hex, repair


def open_readonly(path: str) -> tuple[DataDir, Log, dict, object]:
    datadir = DataDir(path, create=False)
    if not os.path.isdir(datadir.wal_dir):
        raise WalError(f"{path} is not a walnode data directory (it has no wal/ folder)")
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
                sys.stdout.write(json.dumps(line) + "\n")
                offset = e.offset + 1
    finally:
        log.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    datadir = DataDir(args.dir, create=False)
    if not os.path.isdir(datadir.wal_dir):
        raise WalError(f"{args.dir} is not a walnode data directory (it has no wal/ folder)")
    problems, valid = repair.verify(datadir.wal_dir)
    for p in problems:
        resumes = (
            "nothing valid after it"
            if p.resumes_at is None
            else (f"valid records resume at byte {p.resumes_at}")
        )
        kind = "torn tail (walnode cuts it at start)" if p.torn_tail else "CORRUPT"
        print(f"{kind}: {p.file} at byte {p.position}: {p.reason}; {resumes}")
    bad = [p for p in problems if not p.torn_tail]
    print(
        f"{valid} valid records; {len(bad)} corrupt region(s), "
        f"{len(problems) - len(bad)} torn tail(s)"
    )
    if bad:
        print(f"to keep the longest valid prefix: walctl repair {args.dir}")
        return 3
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """CURVE key pairs for tcp (docs/DEPLOY.md): the log side's, a front's,
    and the allowed set. Existing keys are kept, never overwritten."""
    import shutil

    import zmq.auth

    from actors import sockets

    keys = os.path.abspath(args.keydir)
    allowed = os.path.join(keys, sockets.CLIENTS_DIR)
    os.makedirs(allowed, mode=0o700, exist_ok=True)
    os.chmod(keys, 0o700)
    made = []
    for name in (sockets.SERVER_KEY, args.client):
        if not os.path.exists(os.path.join(keys, name + ".key_secret")):
            zmq.auth.create_certificates(keys, name)
            os.chmod(os.path.join(keys, name + ".key_secret"), 0o600)
            made.append(name)
    if not args.no_allow:
        shutil.copy(os.path.join(keys, args.client + ".key"), allowed)
    print(f"keys in {keys} ({'made: ' + ', '.join(made) if made else 'all there already'})")
    print("  log side:  server.key_secret, server.key, clients/ (fronts it lets in)")
    print(f"  front:     {args.client}.key_secret, {args.client}.key, server.key")
    print(f"  {args.client} is {'NOT ' if args.no_allow else ''}in clients/")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    datadir = DataDir(args.dir, create=False)
    if not os.path.isdir(datadir.wal_dir):
        raise WalError(f"{args.dir} is not a walnode data directory (it has no wal/ folder)")
    datadir.lock(f"walctl repair pid {os.getpid()}")
    cut = repair.plan(datadir.wal_dir)
    if cut is None:
        print("nothing to repair: every record is valid")
        return 0
    print(f"the log is valid up to offset {cut.first_lost_offset}; repair removes:")
    print(f"  {cut.remove_bytes} bytes from {cut.file}, from byte {cut.keep_bytes} on")
    for path in cut.remove_files:
        print(f"  the whole file {path}")
    print(
        f"entries from offset {cut.first_lost_offset} on are lost; the log then "
        f"continues at offset {cut.next_offset_after}"
    )
    if not args.yes:
        print("nothing changed; run again with --yes to do it")
        return 1
    repair.apply(cut)
    print("repaired")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="walctl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="summarise a data directory")
    info.add_argument("dir")
    info.set_defaults(func=cmd_info)
    dump = sub.add_parser("dump", help="print entries as JSON lines")
    dump.add_argument("dir")
    dump.add_argument("--from", dest="from_offset", type=int, default=0, metavar="OFFSET")
    dump.set_defaults(func=cmd_dump)
    verify = sub.add_parser("verify", help="check every record; exit 3 if any is corrupt")
    verify.add_argument("dir")
    verify.set_defaults(func=cmd_verify)
    fix = sub.add_parser("repair", help="cut the log back to its longest valid prefix")
    fix.add_argument("dir")
    fix.add_argument("--yes", action="store_true", help="really remove what is listed")
    fix.set_defaults(func=cmd_repair)
    keygen = sub.add_parser("keygen", help="make CURVE keys for tcp deployments (DEPLOY.md)")
    keygen.add_argument("keydir")
    keygen.add_argument("--client", default="client", help="the front key pair's name (client)")
    keygen.add_argument(
        "--no-allow", action="store_true", help="do not add it to KEYDIR/clients (the allowed set)"
    )
    keygen.set_defaults(func=cmd_keygen)
    tools = [
        (
            "crashtest",
            crashtest,
            "kill a live walnode's processes under load; check nothing acknowledged is lost",
        ),
        (
            "bench",
            bench_cli,
            "durable appends/s and latency of a live walnode beside sqlite3, lmdb, fsync...",
        ),
    ]
    for name, tool, summary in tools:  # each tool's module holds its flags and its run
        tool_parser = sub.add_parser(
            name, help=summary, description=tool.__doc__.split("\n\n")[1].replace("\n", " ")
        )
        tool.add_arguments(tool_parser)
        tool_parser.set_defaults(func=tool.run)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except DirectoryLocked as err:
        print(f"walctl: {err}", file=sys.stderr)
        return 2
    except CorruptionError as err:
        print(f"walctl: {err}", file=sys.stderr)
        return 3
    except (WalError, OSError) as err:
        print(f"walctl: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
