"""Real-process helpers shared by the functional and end-to-end tiers, the demo and the benchmarks.

They start throwaway PostgreSQL 15 clusters and PgBouncer processes on loopback, as the
``postgres`` OS user (both refuse root), and stop them by their own PID.
"""
