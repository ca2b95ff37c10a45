"""One session on a small tmpfs (a real full disk) through two node.py's, one
after the other; their reply streams compared (normalised as the differential
does). Needs root (mount -t tmpfs).

    python scripts/diskfull_diff.py --candidate NODE [--reference NODE] [--size 8m]
        [--flag=--max-segment-bytes=1048576]

Appends of ~1000 bytes in writes of 500 lines until well past the disk's size
(the disk fills inside a run), kv_get and wal_info after each write, then
end of input: every msg_id must get exactly one reply, and the two nodes the
same replies."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from walctl.differential.compare import normalise, without_msg_id  # noqa: E402
from walctl.differential.runner import python_for  # noqa: E402


def session(writes: int, per_write: int) -> list[tuple[bytes, int]]:
    """(bytes of one write, how many replies it gets): a run of appends, then
    the queries, each written once the replies before it are out."""
    init = b'{"src": "c", "dest": "n1", "body": {"type": "init", "msg_id": 1, "node_id": "n1"}}\n'
    out = [(init, 1)]
    mid = 2
    for w in range(writes):
        lines = []
        for i in range(per_write):
            payload = f"set k{(w * per_write + i) % 50}=" + "x" * 990 + f"{w * per_write + i}"
            APPEND_INDEX[mid] = w * per_write + i
            lines.append(
                b'{"src": "c", "dest": "n1", "body": {"type": "wal_append", "msg_id": %d, '
                b'"payload": "%s"}}\n' % (mid, payload.encode())
            )
            mid += 1
        out.append((b"".join(lines), per_write))
        lines = []
        for key in ("k7", "k8"):
            lines.append(
                b'{"src": "c", "dest": "n1", "body": {"type": "kv_get", "msg_id": %d, '
                b'"key": "%s"}}\n' % (mid, key.encode())
            )
            mid += 1
        lines.append(
            b'{"src": "c", "dest": "n1", "body": {"type": "wal_info", "msg_id": %d}}\n' % mid
        )
        mid += 1
        out.append((b"".join(lines), 3))
    return out


def run(
    node: str, size: str, flags: list[str], writes: int, per_write: int
) -> tuple[list[str], str]:
    import threading
    import time

    mnt = tempfile.mkdtemp(prefix="tester-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], check=True)
    try:
        data = os.path.join(mnt, "data")
        with open(os.path.join(tempfile.gettempdir(), "tester-full.stderr"), "wb") as err:
            proc = subprocess.Popen(
                [python_for(node), node, f"--data-dir={data}", *flags],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=os.path.dirname(os.path.abspath(node)),
                start_new_session=True,
            )
        got: list[str] = []
        cond = threading.Condition()

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                with cond:
                    got.append(raw.decode().rstrip("\n"))
                    cond.notify_all()
            with cond:
                cond.notify_all()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert proc.stdin is not None
        want = 0
        for data_bytes, replies in session(writes, per_write):
            proc.stdin.write(data_bytes)
            proc.stdin.flush()
            want += replies
            deadline = time.monotonic() + 60
            with cond:
                while len(got) < want and time.monotonic() < deadline and reader.is_alive():
                    cond.wait(0.5)
        proc.stdin.close()
        proc.wait(120)
        reader.join(10)
        lines = [x.replace(data, "$DATA") for x in got]
        usage = subprocess.run(
            ["ls", "-la", os.path.join(data, "wal")], capture_output=True, text=True
        ).stdout
        return lines, f"exit {proc.returncode}\n{usage}"
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)


def stale_reads(lines: list[str]) -> list[str]:
    """kv_get answers that are not the newest acknowledged set of their key (each
    kv_get is written after every earlier reply is out)."""
    import json

    newest: dict[str, str] = {}
    bad = []
    for line in lines:
        body = json.loads(line)["body"]
        if body["type"] == "wal_append_ok":
            i = body["in_reply_to"]
            newest[f"k{APPEND_INDEX[i] % 50}"] = str(APPEND_INDEX[i])
        elif body["type"] == "kv_get_ok":
            if not body["value"].endswith("x" + newest.get(body["key"], "?")):
                bad.append(
                    f"kv_get {body['key']}: ...{body['value'][-8:]}, "
                    f"acked {newest.get(body['key'])}"
                )
    return bad


APPEND_INDEX: dict[int, int] = {}  # an append's msg_id -> its i (payload set k<i%50>=x..<i>)


def summary(lines: list[str], sent: int) -> str:
    import json

    codes = Counter()
    answered = Counter()
    first_full = None
    ok_after_full = 0
    for line in lines:
        body = json.loads(line)["body"]
        answered[body.get("in_reply_to")] += 1
        if body["type"] == "error":
            codes[body["code"]] += 1
            if body["code"] == 11 and first_full is None:
                first_full = body["in_reply_to"]
        else:
            codes[body["type"]] += 1
            if body["type"] == "wal_append_ok" and first_full is not None:
                ok_after_full += 1
    missing = [i for i in range(1, sent + 1) if answered[i] == 0]
    twice = [i for i, n in answered.items() if n > 1]
    return (
        f"replies {dict(codes)}; first disk-full reply to msg_id {first_full}; appends acked "
        f"after it {ok_after_full}; unanswered {len(missing)} {missing[:5]}; twice {twice[:5]}"
    )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--candidate", required=True)
    p.add_argument("--reference", default="/work/main/node.py")
    p.add_argument("--size", default="8m")
    p.add_argument("--writes", type=int, default=24)
    p.add_argument("--per-write", type=int, default=500)
    p.add_argument("--flag", dest="flags", action="append", default=[])
    args = p.parse_args()
    sent = 1 + args.writes * (args.per_write + 3)
    streams = {}
    for label, node in (("reference", args.reference), ("candidate", args.candidate)):
        lines, tail = run(node, args.size, args.flags, args.writes, args.per_write)
        streams[label] = lines
        print(f"{label}: {summary(lines, sent)}")
        for line in stale_reads(lines)[:5]:
            print(f"  {label}: STALE {line}")
        if "-v" in os.environ.get("DISKFULL_VERBOSE", ""):
            print(tail)
    want = Counter(without_msg_id(normalise(x))[0] for x in streams["reference"])
    got = Counter(without_msg_id(normalise(x))[0] for x in streams["candidate"])
    missing, extra = list((want - got).elements()), list((got - want).elements())
    for line in missing[:8]:
        print(f"  missing {line[:300]}")
    for line in extra[:8]:
        print(f"  unexpected {line[:300]}")
    print(f"{len(missing)} missing, {len(extra)} unexpected")
    return 1 if missing or extra else 0


if __name__ == "__main__":
    sys.exit(main())
