"""`walctl keygen KEYDIR`: CURVE key pairs for tcp (docs/DEPLOY.md): the log
side's, a front's, and the allowed set. Existing keys are kept, never
overwritten."""

from __future__ import annotations

import argparse
import os
import shutil


def run(args: argparse.Namespace) -> int:
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("keydir")
    p.add_argument("--client", default="client", help="the front key pair's name (client)")
    p.add_argument(
        "--no-allow", action="store_true", help="do not add it to KEYDIR/clients (the allowed set)"
    )
