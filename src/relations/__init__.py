"""One module per endpoint: backend_database (requires), client_database (provides), peers."""
