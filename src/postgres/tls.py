"""The backend's CA as a file for the charm's own psycopg connections (libpq reads only files).

The file lives in the charm's container (not the workload's): the unit's state directory by
default. It is written only when its content changes, atomically (a temporary file renamed
over it), mode 0600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from state.tls import BackendTLS

CA_FILE_NAME = "backend-tls-ca.crt"


def write_backend_ca(backend: BackendTLS | None, directory: str | os.PathLike[str]) -> str | None:
    """Keep ``<directory>/backend-tls-ca.crt`` equal to the backend's CA; its path, or None.

    Args:
        backend: the backend's checked CA, or None (then the file is removed).
        directory: where to keep it (created 0700 if missing).

    Returns:
        The file's path for :attr:`postgres.connection.BackendCredentials.sslrootcert`, or None
        when the backend has no TLS.
    """
    path = Path(directory) / CA_FILE_NAME
    if backend is None:
        path.unlink(missing_ok=True)
        return None
    if path.exists() and path.read_text() == backend.ca_pem:
        return str(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ca-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(backend.ca_pem)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)
