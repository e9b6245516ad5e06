"""The backend PostgreSQL: SQL for the auth plumbing and client users, through psycopg 3."""
