"""The image contract script, run for real by ``sh`` as the ``postgres`` user.

Each case builds a directory tree standing in for the image (a ``bin`` on PATH and a base
directory) that lacks one piece, and checks that the report names exactly that piece.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.servers.system import as_service_user, pgbouncer_binary, service_ids, service_tempdir
from pgbouncer.image import contract_command, parse_report, problems

pytestmark = pytest.mark.needs_root


@pytest.fixture
def image():
    """A stand-in image: ``bin/pgbouncer`` (our real binary) and a writable ``base``."""
    root = service_tempdir("pgbk8s-image-")
    (root / "bin").mkdir()
    (root / "bin" / "pgbouncer").symlink_to(pgbouncer_binary())
    (root / "base").mkdir()
    uid, gid = service_ids()
    for path in (root / "bin", root / "base"):
        os.chown(path, uid, gid)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_check(root: Path, base: Path, *, as_postgres: bool = True) -> tuple[str, ...]:
    argv = contract_command(str(base))
    env = {"PATH": f"{root / 'bin'}:/usr/bin:/bin"}
    # /usr/bin stays on PATH for id(1); no pgbouncer is installed there on this machine.
    out = subprocess.run(
        as_service_user(argv) if as_postgres else argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=root,
    )
    return problems(parse_report(out.stdout))


def test_no_other_pgbouncer_on_the_path_used():
    assert shutil.which("pgbouncer", path="/usr/bin:/bin") is None


def test_a_complete_image_passes(image):
    assert run_check(image, image / "base") == ()


def test_the_exporter_is_reported_absent_until_the_image_carries_one(image):
    def absent() -> tuple[str, ...]:
        argv = as_service_user(contract_command(str(image / "base")))
        env = {"PATH": f"{image / 'bin'}:/usr/bin:/bin"}
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=True)
        return parse_report(out.stdout).absent

    for name in ("pgbouncer-exporter", "pgbouncer_exporter"):
        assert shutil.which(name, path="/usr/bin:/bin") is None
    assert absent() == ("pgbouncer-exporter", "pgbouncer_exporter")
    # The default image: only the Go exporter.
    go = image / "bin" / "pgbouncer_exporter"
    go.write_text("#!/bin/sh\nexit 0\n")
    go.chmod(0o755)
    assert absent() == ("pgbouncer-exporter",)
    exporter = image / "bin" / "pgbouncer-exporter"
    exporter.write_text("#!/bin/sh\nexit 0\n")
    exporter.chmod(0o755)
    assert absent() == ()


def test_no_pgbouncer_on_path(image):
    (image / "bin" / "pgbouncer").unlink()
    assert run_check(image, image / "base") == ("pgbouncer on PATH",)


def test_base_dir_missing(image):
    assert run_check(image, image / "absent") == (f"writable {image / 'absent'}",)


def test_base_dir_not_writable_by_postgres(image):
    base = image / "rootowned"
    base.mkdir(mode=0o755)
    os.chown(base, 0, 0)
    assert run_check(image, base) == (f"writable {base}",)


def test_pgbouncer_too_old(image):
    fake = image / "bin" / "pgbouncer"
    fake.unlink()
    fake.write_text("#!/bin/sh\necho 'PgBouncer 1.18.0'\n")
    fake.chmod(0o755)
    assert run_check(image, image / "base") == ("PgBouncer >= 1.21 (found 1.18.0)",)


def test_pgbouncer_that_prints_no_version(image):
    fake = image / "bin" / "pgbouncer"
    fake.unlink()
    fake.write_text("#!/bin/sh\necho 'missing nothing, all fine'\n")
    fake.chmod(0o755)
    assert run_check(image, image / "base") == ("PgBouncer >= 1.21 (no version reported)",)


def test_running_as_root_breaks_the_user_items(image):
    assert run_check(image, image / "base", as_postgres=False) == (
        "user postgres",
        "a non-root uid",
    )


def test_every_piece_missing_at_once(image):
    (image / "bin" / "pgbouncer").unlink()
    found = run_check(image, image / "absent", as_postgres=False)
    assert found == (
        "user postgres",
        "a non-root uid",
        f"writable {image / 'absent'}",
        "pgbouncer on PATH",
    )


def test_a_hostile_directory_name_is_data_not_script(image):
    marker = image / "pwned"
    base = image / "$(touch pwned); `touch pwned`"  # run from inside the image root
    base.mkdir()
    os.chown(base, *service_ids())
    assert run_check(image, base) == ()
    assert not marker.exists()
