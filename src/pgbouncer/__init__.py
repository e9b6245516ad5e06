"""PgBouncer: pure configuration rendering, and the Pebble workload (layer, files, reload)."""
