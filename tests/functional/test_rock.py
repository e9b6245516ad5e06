"""The recommended image (``rockcraft.yaml``): built by our scripts, accepted by the image check.

It cannot be packed here (rockcraft needs LXD). What is checked: the rock's parts call the
very scripts ``scripts/setup-system.sh`` calls, with the same Debian suite and revision, so the
tests' PgBouncer (``.build/pgbouncer``) and exporter (``.build/exporter``) are what the rock
builds; and a stand-in of the rock's root, laid out from ``rockcraft.yaml`` (PgBouncer's
``--prefix``, the exporter's link, the base directory its prime step creates) with those
binaries in it, passes the real contract script (``pgbouncer.image``) run by ``sh`` as the
``postgres`` user with the rock's PATH: nothing missing, the Python exporter present, the
version read.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from harness.servers.system import (
    PROJECT_ROOT,
    as_service_user,
    pgbouncer_binary,
    pgbouncer_version_tuple,
    service_ids,
    service_tempdir,
)
from pgbouncer.exporter import EXPORTER_COMMAND
from pgbouncer.image import contract_command, parse_report, problems
from pgbouncer.slots import DEFAULT_BASE_DIR

ROCK = yaml.safe_load((PROJECT_ROOT / "rockcraft.yaml").read_text())
SETUP = (PROJECT_ROOT / "scripts" / "setup-system.sh").read_text()
ROCK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the base's


def _calls(script: str, text: str) -> list[list[str]]:
    """The argument lists of every call of ``scripts/<script>`` in shell ``text``."""
    joined = text.replace("\\\n", " ")
    return [
        shlex.split(match)
        for match in re.findall(
            rf"bash \"?[^\s\"]*scripts/{re.escape(script)}\"?([^\n;]*)", joined
        )
    ]


def test_the_rock_builds_with_the_scripts_and_revision_the_tests_use():
    build = ROCK["parts"]["pgbouncer"]["override-build"]
    (rock_call,) = _calls("build-pgbouncer.sh", build)
    (setup_call,) = _calls("build-pgbouncer.sh", SETUP)
    assert setup_call == ["$PREFIX", "$PGB_SUITE", "$PIN_VERSION"]
    trixie = re.search(r'trixie\) PREFIX="[^"]+"; PIN_VERSION="([^"]+)"', SETUP)
    assert trixie is not None
    prefix, suite, pin, destdir = rock_call
    assert (suite, pin) == ("trixie", trixie.group(1))  # the same source and patches
    assert destdir == "$CRAFT_PART_INSTALL" and prefix.startswith("/")
    exporter = ROCK["parts"]["exporter"]["override-build"]
    assert [c[1] for c in _calls("build-exporter.sh", exporter)] == ["requirements-exporter.txt"]
    assert [c[1] for c in _calls("build-exporter.sh", SETUP)] == [
        "$ROOT/requirements-exporter.txt"
    ]


@pytest.mark.needs_root
def test_a_root_laid_out_as_the_rock_passes_the_image_check():
    exporter_bin = PROJECT_ROOT / ".build" / "exporter" / "bin" / EXPORTER_COMMAND
    if not exporter_bin.exists():
        pytest.skip("no .build/exporter (scripts/setup-system.sh)")
    (rock_call,) = _calls("build-pgbouncer.sh", ROCK["parts"]["pgbouncer"]["override-build"])
    link = re.search(
        rf"ln -sf (\S+)\s+\"\$CRAFT_PART_INSTALL(/\S+/{EXPORTER_COMMAND})\"",
        ROCK["parts"]["exporter"]["override-build"].replace("\\\n", " "),
    )
    assert link is not None
    base = re.search(
        r'install -d .*"\$CRAFT_PRIME(/\S+)"', ROCK["parts"]["workload-user"]["override-prime"]
    )
    assert base is not None and base.group(1) == DEFAULT_BASE_DIR
    overlay = ROCK["parts"]["workload-user"]["overlay-script"]
    assert re.search(r"useradd .* -u (\d+) postgres", overlay)
    assert not re.search(r"-u 0\b", overlay)

    root = service_tempdir("pgbk8s-rock-")
    try:
        binary = root / rock_call[0].lstrip("/") / "bin" / "pgbouncer"
        binary.parent.mkdir(parents=True)
        binary.symlink_to(pgbouncer_binary())
        exporter = root / link.group(2).lstrip("/")
        exporter.parent.mkdir(parents=True, exist_ok=True)
        exporter.symlink_to(exporter_bin)
        base_dir = root / base.group(1).lstrip("/")
        base_dir.mkdir(parents=True, mode=0o750)
        uid, gid = service_ids()  # the rock's postgres (584788) is this machine's postgres
        os.chown(base_dir, uid, gid)
        # The rock's PATH, each entry inside the stand-in root, then the host's for id(1).
        path = ":".join(str(root / p.lstrip("/")) for p in ROCK_PATH.split(":"))
        out = subprocess.run(
            as_service_user(contract_command(str(base_dir))),
            env={"PATH": f"{path}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        report = parse_report(out.stdout)
        assert problems(report) == ()
        assert EXPORTER_COMMAND not in report.absent
        # The check reads the version of the binary laid out: the rock's 1.24.1 is the default
        # build's; the version matrix (PGBOUNCER_BUILD) lays out its own.
        assert report.version == ".".join(map(str, pgbouncer_version_tuple()))
        if os.environ.get("PGBOUNCER_BUILD", "pgbouncer") == "pgbouncer":
            assert report.version == "1.24.1"
    finally:
        shutil.rmtree(root, ignore_errors=True)
