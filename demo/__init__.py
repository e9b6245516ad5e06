"""``make demo``: the charm's life story, narrated, on a real PostgreSQL and real PgBouncer.

Juju and Pebble's process management are simulated (``ops.testing`` and the end-to-end harness
in ``harness``); PostgreSQL 15, PgBouncer 1.24, the SQL, the files, the processes and
the client's connection are real. Run with ``python -m demo`` from the repository root, as root.
"""
