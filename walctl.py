"""walctl: the operator's tool for a walnode data directory, used offline.

    walctl info DIR                 what the directory holds (read-only)
    walctl dump DIR [--from N]      print entries as JSON lines (read-only)

It opens the log read-only: nothing is cut, created or changed, so it is
safe beside a running walnode (it then sees what was written so far).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from wal import CorruptionError, DataDir, Log, WalError, crc_hex


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
    args = p.parse_args(argv)
    try:
        return args.func(args)
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
