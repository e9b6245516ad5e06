"""``bench.report._merge``: a partial ``make bench`` run replaces its sections and keeps the rest."""

from __future__ import annotations

from bench.report import _merge

FULL = """# results

Run 2026-11-30 05:57 UTC, 879 s in all.

| machine | |
|---|---|
| cpu | 2 |

## 3. Reconfiguration under load

old three

## 6. Planned changes

old six

## Targets of the issue (reported, not asserted)

| target | this run | met |
|---|---|---|
| a three target | 1 | yes |
| a six target | 2 | no |
"""


def test_partial_runs_replace_their_sections_and_keep_each_others_notes():
    six = [["## 6. Planned changes", "", "new six"]]
    first = "\n".join(_merge(FULL, ("changes",), "08:28 UTC (194 s)", six))
    assert "new six" in first and "old six" not in first and "old three" in first
    assert "| a three target | 1 | yes |" in first  # targets of parts not run are kept
    three = [["## 3. Reconfiguration under load", "", "new three"]]
    second = "\n".join(_merge(first, ("reconfig",), "08:32 UTC (48 s)", three))
    assert "new three" in second and "new six" in second
    notes = [line for line in second.splitlines() if line.startswith("Section")]
    assert notes == [
        "Section 6 was re-run alone (`BENCH_PARTS=changes`) on 08:28 UTC (194 s).",
        "Section 3 was re-run alone (`BENCH_PARTS=reconfig`) on 08:32 UTC (48 s).",
    ]
    assert second.count("Every section not named in such a line is from the run above.") == 1
    assert second.index("Section 6") < second.index("| machine")
    # Running a section again replaces its note instead of adding one.
    again = "\n".join(_merge(second, ("changes",), "09:00 UTC (190 s)", six))
    assert [line for line in again.splitlines() if line.startswith("Section 6")] == [
        "Section 6 was re-run alone (`BENCH_PARTS=changes`) on 09:00 UTC (190 s)."
    ]
