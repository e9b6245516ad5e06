"""The leader's backend check runs at most every half hour, at once after a failure (issue 23)."""

from __future__ import annotations

from pathlib import Path

from postgres.verification import MARKER, VERIFY_EVERY_S, verification_due

T0 = 1_800_000_000.0


def test_the_first_check_is_due_and_noted(tmp_path: Path) -> None:
    assert verification_due(tmp_path, now=T0)
    assert (tmp_path / MARKER).stat().st_mtime == T0
    assert (tmp_path / MARKER).stat().st_mode & 0o777 == 0o600


def test_no_second_check_within_the_interval(tmp_path: Path) -> None:
    assert verification_due(tmp_path, now=T0)
    assert not verification_due(tmp_path, now=T0 + 1)
    assert not verification_due(tmp_path, now=T0 + VERIFY_EVERY_S - 1)
    assert (tmp_path / MARKER).stat().st_mtime == T0  # a skipped check notes nothing


def test_due_again_once_the_interval_passed(tmp_path: Path) -> None:
    assert verification_due(tmp_path, now=T0)
    assert verification_due(tmp_path, now=T0 + VERIFY_EVERY_S)
    assert not verification_due(tmp_path, now=T0 + VERIFY_EVERY_S + 60)


def test_a_failed_attempt_forces_the_check(tmp_path: Path) -> None:
    assert verification_due(tmp_path, now=T0)
    assert verification_due(tmp_path, force=True, now=T0 + 1)


def test_a_clock_that_went_backwards_checks(tmp_path: Path) -> None:
    assert verification_due(tmp_path, now=T0)
    assert verification_due(tmp_path, now=T0 - 10)


def test_an_unwritable_directory_checks_every_time(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    assert verification_due(missing, now=T0)
    assert verification_due(missing, now=T0 + 1)
