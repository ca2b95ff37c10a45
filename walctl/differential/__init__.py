"""Differential testing: one JSON-lines session piped through two walnodes,
their reply streams compared (docs/TESTING.md, "Differential runs").

session: what a session is (writes, pauses, barriers, restarts); lines: the
request lines, ordinary and adversarial; cases: the fixed sessions whose
replies from main are stored in tests/differential_corpus.json.gz; randomgen:
random sessions for long runs; runner: drives one node.py through a session;
compare: what of two reply streams must be equal, and where they differ.
"""
