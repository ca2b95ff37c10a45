"""Benchmarks for walnode (`walctl bench`; docs/BENCHMARKS.md).

- `appends`: drives a real walnode over its stdin and stdout, N requests in flight;
- `peers`: the same appends against sqlite3, rocksdict, lmdb, a raw
  write+fdatasync loop, and the disk's ceiling;
- `report`: percentiles, the table, ratios and targets; `chart`: the PNG;
- `profile`: py-spy samples of walnode's processes under load;
- `cli`: the `walctl bench` command.
"""
