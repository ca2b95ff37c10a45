"""walnode's processes. Each module is one actor, plus `messages` (the one
internal message schema), `sockets` (endpoints and socket options) and
`runtime` (what every child process does at start)."""
