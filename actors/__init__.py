"""walnode's processes. Each module is one actor, plus `messages` (the one
internal message schema), `sockets` (endpoints and socket options),
`runtime` (what every child process does at start) and `startup` (what the
supervisor does before anything else)."""
