"""End-to-end harness: Scenario plays Juju and Pebble's API, the processes and servers are real.

- :mod:`.pebble_standin`: the project's one model of Pebble's behaviour (plan, services, exit
  policies, signals, exec, files), for the harness and the bench alike.
- :mod:`.processes`: what the charm asked Pebble for, recorded during a Scenario run, replayed
  on the stand-in with real PgBouncer processes in a private mount namespace
  (``PebbleRecorder``, ``PebbleProcessRunner``).
- :mod:`.postgresql_charm`: the PostgreSQL charm's side of ``backend-database``, played on a real
  PostgreSQL server (``FakePostgresqlCharm``).
- :mod:`.juju`: a multi-unit application whose units' Scenario states are carried between hook
  runs and kept consistent (peer data, application secrets, shared relations).
"""
