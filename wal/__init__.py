"""walnode's storage library: records, segments, the log, the data directory.

A plain library: no sockets, no actors. The on-disk format is documented
once, in docs/FORMAT.md; `record` and `segment` mirror it.
"""

from wal.datadir import DataDir, DirectoryLocked
from wal.errors import CorruptionError, DiskFull, WalError
from wal.log import Entry, Log, RecoveryReport, SegmentInfo
from wal.record import crc_hex

__all__ = [
    "CorruptionError",
    "DataDir",
    "DirectoryLocked",
    "DiskFull",
    "Entry",
    "Log",
    "RecoveryReport",
    "SegmentInfo",
    "WalError",
    "crc_hex",
]
