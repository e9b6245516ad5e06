"""One hook in a fresh Python process, as Juju runs it: ``python -m bench.hook_child``.

Arguments: ``ours`` or ``floor``, and a pickle of (state before the hook, event spec). Imports
ops, the testing framework and the charm, runs the one event with ``ops.testing`` and prints a
JSON line: import and dispatch times (ms), peak RSS and the unit status after the hook. The
parent measures the process's wall time.
"""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import time
import warnings
from pathlib import Path

T0 = time.perf_counter()


def _peak_rss_kib() -> int:
    """This process's peak resident set (``VmHWM``), in KiB.

    Read here rather than from the parent's ``wait4``: a child's ``ru_maxrss`` starts from the
    forking parent's high-water mark, which would hide the hook's own.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    """Import, dispatch one event, report."""
    warnings.filterwarnings("ignore", category=UserWarning)
    which, state_path = sys.argv[1], Path(sys.argv[2])
    from ops import testing

    import bench  # noqa: F401 - puts src/ on sys.path, as the charm root does for dispatch

    if which == "floor":
        sys.path.insert(0, str(Path(__file__).parent / "floor_charm" / "src"))
        # The floor charm's own ``charm`` module, first on the path now: not the one under src/.
        charm_type = importlib.import_module("charm").FloorCharm
    else:
        import charm

        charm_type = charm.PgBouncerK8sCharm
    t_import = time.perf_counter()
    spec = pickle.loads(state_path.read_bytes())  # noqa: S301 - our own file
    state, event, ctx_kwargs = spec["state"], spec["event"], spec["ctx"]
    ctx = testing.Context(charm_type, **ctx_kwargs)
    kind, *args = event
    if kind == "pebble_ready":
        ev = ctx.on.pebble_ready(state.get_container(args[0]))
    elif kind == "relation_changed":
        ev = ctx.on.relation_changed(state.get_relation(args[0]), remote_unit=args[1])
    else:
        ev = getattr(ctx.on, kind)()
    out = ctx.run(ev, state)
    t_run = time.perf_counter()
    print(
        json.dumps(
            {
                "import_ms": (t_import - T0) * 1000,
                "run_ms": (t_run - t_import) * 1000,
                "status": str(out.unit_status),
                "hwm_kib": _peak_rss_kib(),
            }
        )
    )


if __name__ == "__main__":
    main()
