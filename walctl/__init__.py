"""walctl: walnode's operator tools, one package.

- `cli`: the `walctl` command and the offline tools on a data directory
  (info, dump, verify, repair);
- `keygen`: CURVE keys for tcp deployments (docs/DEPLOY.md);
- `crashtest`: the kill experiment (docs/CRASHTEST.md);
- `bench`: appends/s and latency beside sqlite3, lmdb, ... (docs/BENCHMARKS.md).

crashtest and bench are imported only when their command runs, so the
offline tools need none of their optional dependencies (tqdm, matplotlib).
"""
