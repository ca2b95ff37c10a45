"""The real etcd of the tests: walctl/etcdproc.py (shared with `walctl crashtest --cluster`)."""

from walctl.etcdproc import EtcdServer, etcd_binary, free_port

__all__ = ["EtcdServer", "etcd_binary", "free_port"]
