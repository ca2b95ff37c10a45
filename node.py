"""walnode: a durable write-ahead log node, JSON lines on stdin and stdout.

The thin entry point a user or a harness launches; the supervisor does the
rest. See README.md for the flags and docs/PROTOCOL.md for the messages.
"""

import sys

from supervisor import main

if __name__ == "__main__":
    sys.exit(main())
