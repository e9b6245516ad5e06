"""The backend PostgreSQL: SQL for the auth plumbing and client users, through psycopg 3.

- ``connection``: ``BackendCredentials``, ``connect()``, the typed ``BackendError`` family.
- ``auth``: the ``auth_query`` lookup (install, remove, leftovers), auth role names.
- ``clients``: users and databases for the client ``database`` relation.
- ``passwords``: generated passwords, SCRAM verifiers set through libpq.
- ``queries``: the SQL text, kept in ``sql/*.sql``.

See docs/auth-plumbing.md for what is created and why.
"""
