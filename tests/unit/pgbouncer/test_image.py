"""The image contract check: its report parsing, and what the charm does with a bad image."""

from __future__ import annotations

import dataclasses

import pytest
from ops import testing

from pgbouncer.image import (
    VERSION_MARKER,
    ImageFacts,
    ImageReport,
    contract_command,
    parse_report,
    problems,
)
from tests.unit.conftest import make_container, peer_relation

GOOD = f"{VERSION_MARKER}\nPgBouncer 1.21.0\nlibevent 2.1.12-stable\n"


def test_a_complete_image_reports_nothing_missing():
    assert parse_report(GOOD) == ImageReport((), "1.21.0")
    assert problems(parse_report(GOOD)) == ()


def test_every_missing_line_is_reported_in_order():
    out = f"missing user postgres\nmissing writable /var/lib/pgbouncer\n{VERSION_MARKER}\n"
    report = parse_report(out + "PgBouncer 1.24.1\n")
    assert report.missing == ("user postgres", "writable /var/lib/pgbouncer")


def test_the_binary_cannot_forge_or_hide_a_missing_line():
    # Whatever pgbouncer --version prints comes after the marker: it is never read as an item.
    forged = f"{VERSION_MARKER}\nmissing nothing\nPgBouncer 1.24.1\n"
    assert parse_report(forged) == ImageReport((), "1.24.1")
    hidden = f"missing pgbouncer on PATH\n{VERSION_MARKER}\n{VERSION_MARKER}\n"
    assert parse_report(hidden).missing == ("pgbouncer on PATH",)


def test_an_absent_exporter_is_reported_apart_from_the_contract():
    report = parse_report(f"absent pgbouncer-exporter\n{VERSION_MARKER}\nPgBouncer 1.21.0\n")
    assert report == ImageReport((), "1.21.0", ("pgbouncer-exporter",))
    assert problems(report) == ()  # not a block: the unit runs, without metrics
    # PgBouncer's own output cannot claim the exporter is absent (or present).
    forged = parse_report(f"{VERSION_MARKER}\nabsent pgbouncer-exporter\nPgBouncer 1.24.1\n")
    assert forged.absent == ()


def test_output_without_the_marker_is_a_failed_check():
    assert parse_report("missing user postgres\n").missing == ("a complete image check run",)
    assert parse_report("").missing == ("a complete image check run",)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1.18.0", ("PgBouncer >= 1.21 (found 1.18.0)",)),
        ("1.20.1", ("PgBouncer >= 1.21 (found 1.20.1)",)),
        ("1.21.0", ()),
        ("1.24.1", ()),
        (None, ("PgBouncer >= 1.21 (no version reported)",)),
    ],
)
def test_the_minimum_version_is_part_of_the_contract(version, expected):
    assert problems(ImageReport((), version)) == expected


def test_no_version_complaint_when_the_binary_itself_is_missing():
    assert problems(ImageReport(("pgbouncer on PATH",), None)) == ("pgbouncer on PATH",)


def test_the_command_is_one_sh_with_the_base_dir_as_argument():
    argv = contract_command("/var/lib/pgbouncer")
    assert argv[:2] == ["sh", "-c"]
    assert argv[-1] == "/var/lib/pgbouncer"
    assert "/var/lib/pgbouncer" not in argv[2]  # data, not script text


# -- the charm at pebble-ready --------------------------------------------------------------
def _ready(ctx, dirs, check: testing.Exec):
    container = make_container(dirs, running=False)
    others = {e for e in container.execs if e.command_prefix[0] != "sh"}
    container = dataclasses.replace(container, execs={*others, check})
    state = testing.State(leader=True, relations={peer_relation()}, containers={container})
    return ctx.run(ctx.on.pebble_ready(container), state)


BAD = testing.Exec(
    ["sh", "-c"],
    stdout=(
        "missing user postgres\nmissing writable /var/lib/pgbouncer\n"
        f"missing pgbouncer on PATH\n{VERSION_MARKER}\nsh: pgbouncer: not found\n"
    ),
)


def test_a_bad_image_blocks_naming_every_missing_piece_and_runs_nothing(ctx, dirs):
    out = _ready(ctx, dirs, BAD)
    assert out.unit_status == testing.BlockedStatus(
        "pgbouncer-image lacks: user postgres; writable /var/lib/pgbouncer; pgbouncer on PATH"
    )
    assert out.get_container("pgbouncer").plan.services == {}
    # Nothing PgBouncer reads: only what the check found, kept for the next hooks' status.
    assert [p.name for p in dirs.pgb.iterdir()] == ["image-check.json"]
    facts = ImageFacts.from_text((dirs.pgb / "image-check.json").read_text())
    assert facts.problems == ("user postgres", "writable /var/lib/pgbouncer", "pgbouncer on PATH")


def test_a_later_hook_still_blocks_on_what_the_check_found(ctx, dirs):
    """The findings outlive the pebble-ready hook (in the container, not in the charm)."""
    _ready(ctx, dirs, BAD)
    state = testing.State(
        leader=True, relations={peer_relation()}, containers={make_container(dirs, running=False)}
    )
    out = ctx.run(ctx.on.config_changed(), state)
    assert out.unit_status == testing.BlockedStatus(
        "pgbouncer-image lacks: user postgres; writable /var/lib/pgbouncer; pgbouncer on PATH"
    )
    assert out.get_container("pgbouncer").plan.services == {}


def test_the_check_is_one_exec_as_the_workload_user(ctx, dirs):
    _ready(ctx, dirs, testing.Exec(["sh", "-c"], stdout=GOOD))
    checks = [e for e in ctx.exec_history["pgbouncer"] if e.command[0] == "sh"]
    assert len(checks) == 1
    assert (checks[0].user, checks[0].group) == ("postgres", "postgres")


def test_a_fixed_image_clears_the_block_at_the_next_pebble_ready(ctx, dirs):
    bad = _ready(ctx, dirs, BAD)
    container = bad.get_container("pgbouncer")
    fixed = dataclasses.replace(
        container,
        execs={e for e in container.execs if e.command_prefix[0] != "sh"}
        | {testing.Exec(["sh", "-c"], stdout=GOOD)},
    )
    out = ctx.run(ctx.on.pebble_ready(fixed), dataclasses.replace(bad, containers={fixed}))
    assert "lacks" not in out.unit_status.message
    assert sorted(out.get_container("pgbouncer").plan.services) == ["pgbouncer_0"]


def test_a_check_that_fails_to_run_blocks(ctx, dirs):
    out = _ready(ctx, dirs, testing.Exec(["sh", "-c"], return_code=126))
    assert out.unit_status.message == (
        "pgbouncer-image lacks: a complete image check run (exit 126)"
    )
