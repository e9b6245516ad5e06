"""Real processes for the services of a Pebble plan that a Scenario run produced.

Scenario (``ops.testing`` 8.9) plays Pebble's API but runs nothing. What its mock client does
with each call, read from ``scenario/mocking.py`` and ``ops/_private/harness.py``:

- ``send_signal``: checks that the services exist and are active and that the signal name is
  valid, then does nothing; nothing is recorded in the output state.
- ``restart_services`` / ``start_services`` / ``stop_services``: set the service's status
  (``ACTIVE`` / ``INACTIVE``) and make a change object inside the throwaway client. A restart of
  an active service leaves the output state exactly as it was.
- ``replan_services`` / ``autostart_services``: mark every ``startup: enabled`` service ``ACTIVE``;
  a service whose definition changed is *not* restarted (real Pebble restarts it).
- ``push`` / ``make_dir``: write into the container's filesystem (through a ``Mount``, into a
  real directory) with the requested mode, but ignore ``user``/``group``: files stay owned by
  the test process.

So the output state cannot tell a reload from nothing, nor a restart from nothing. The harness
therefore *records* the calls: :class:`PebbleRecorder` wraps those methods of Scenario's mock
Pebble client for the duration of a run and keeps each call in order (container, action,
services, signal). :class:`PebbleProcessRunner` then replays them on the project's one Pebble
stand-in (:class:`harness.pebble_standin.PebbleStandIn`: replan, start, stop, restart, signals,
exit policies from the definition a process was started with), for which it is the process
backend: each service a real process. The recorder also applies the ownership Pebble would give pushed files and made directories (``user``/``group``, else root),
so a charm that forgets ``user="postgres"`` fails here as it would in a pod.

Nothing is inferred from changed files: a charm that rewrites ``pgbouncer.ini`` without telling
Pebble leaves the real process on the old configuration, exactly as in production, and an
end-to-end test sees it. :meth:`PebbleProcessRunner.sync` is the state-only fallback (make the
running processes match the plan and the services' statuses) for callers without a recording.

Each service runs as ``setpriv --pdeathsig SIGKILL -- unshare --mount --propagation private --
sh -c <script>``: the script mounts a private tmpfs on a scratch directory, lays an overlay
(upper layer on that tmpfs) over the nearest existing ancestor of each container path missing on
the host (``/var/lib`` for ``/var/lib/pgbouncer``), creates the mountpoint inside it, bind-mounts
the host directory there, then ``exec setpriv --reuid=<user> --regid=<group> --init-groups --
<command>``. Every step execs, so the PID held is the service's own process (PgBouncer), and the
host sees no mount and no new directory. ``PATH`` starts with the directory of our built
PgBouncer, so the plan's bare ``pgbouncer`` resolves to it. A process that ends by itself is
handled at the next :meth:`PebbleProcessRunner.reap` (``on-success``/``on-failure``); a crash stays
in :meth:`PebbleProcessRunner.exited` even when its policy restarted it. Services get ``SIGKILL`` as parent-death signal, so a test process killed without its
``finally`` blocks leaves no PgBouncer behind (start the runner from the thread that lives
longest: the signal follows the thread that forked).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ops import pebble

from harness.ops_internals import mock_pebble_client_class
from harness.pebble_standin import (
    ACTIVE,
    INACTIVE,
    PebbleError,
    PebbleStandIn,
    ServiceSpec,
    SyncReport,
)
from harness.servers.system import pgbouncer_binary

logger = logging.getLogger(__name__)

CONTAINER_PATH = "/var/lib/pgbouncer"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ProcessError(RuntimeError):
    """A service process could not be started, exited, or did not become ready."""


# --------------------------------------------------------------------------------------------
# What the charm asked Pebble for
# --------------------------------------------------------------------------------------------


MAX_REPLAYED_GAP_S = 5.0
"""The longest pause between two signals that a replay reproduces."""


@dataclass(frozen=True)
class PebbleCall:
    """One call the charm made on Scenario's Pebble client, in the order made.

    Attributes:
        container: the container's name.
        action: ``replan``, ``autostart``, ``start``, ``stop``, ``restart`` or ``signal``.
        services: the services named in the call (empty for ``replan``/``autostart``).
        signal: the signal name for ``signal`` (``SIGHUP``), else None.
        at: when the call was made (monotonic seconds); the replay keeps the gaps between
            signals, so that PAUSE … RELOAD … RESUME reaches the processes paced as in a pod.
            Left out of comparisons.
    """

    container: str
    action: str
    services: tuple[str, ...] = ()
    signal: str | None = None
    at: float = field(default=0.0, compare=False)


def _scenario_client_class() -> type:
    return mock_pebble_client_class()  # a private part of Scenario: harness/ops_internals.py


class PebbleRecorder:
    """Records service calls made on Scenario's mock Pebble client while it is entered.

    Use around one ``ctx.run``; ``calls`` then lists what the charm asked for. While entered it
    also chowns what ``push``/``make_dir`` write (set ``apply_ownership=False`` to keep
    Scenario's behaviour).
    """

    _SERVICE_METHODS = {
        "replan_services": "replan",
        "autostart_services": "autostart",
        "start_services": "start",
        "stop_services": "stop",
        "restart_services": "restart",
    }

    def __init__(self, apply_ownership: bool = True):
        self.calls: list[PebbleCall] = []
        self.apply_ownership = apply_ownership
        self._saved: dict[str, Any] = {}

    def for_container(self, name: str) -> list[PebbleCall]:
        """The calls made on one container, in order."""
        return [call for call in self.calls if call.container == name]

    def __enter__(self) -> PebbleRecorder:
        cls = _scenario_client_class()
        for method, action in self._SERVICE_METHODS.items():
            self._wrap(cls, method, self._service_wrapper(action))
        self._wrap(cls, "send_signal", self._signal_wrapper)
        if self.apply_ownership:
            self._wrap(cls, "push", self._owner_wrapper("push"))
            self._wrap(cls, "make_dir", self._owner_wrapper("make_dir"))
        return self

    def __exit__(self, *exc: object) -> None:
        cls = _scenario_client_class()
        for method, original in self._saved.items():
            if original is None:
                delattr(cls, method)
            else:
                setattr(cls, method, original)
        self._saved.clear()

    def _wrap(self, cls: type, method: str, make: Callable[[Callable], Callable]) -> None:
        original = getattr(cls, method)
        self._saved[method] = cls.__dict__.get(method)
        setattr(cls, method, make(original))

    def _service_wrapper(self, action: str) -> Callable[[Callable], Callable]:
        recorder = self

        def make(original: Callable) -> Callable:
            def wrapper(client: Any, *args: Any, **kwargs: Any) -> Any:
                result = original(client, *args, **kwargs)
                names = tuple(args[0]) if args and action not in ("replan", "autostart") else ()
                if "services" in kwargs:
                    names = tuple(kwargs["services"])
                # replan calls autostart internally: record what the charm called, once.
                if not (action == "autostart" and getattr(client, "_pgbk8s_in_replan", False)):
                    recorder.calls.append(PebbleCall(client._container_name, action, names))
                return result

            if action == "replan":

                def replan(client: Any, *args: Any, **kwargs: Any) -> Any:
                    client._pgbk8s_in_replan = True
                    try:
                        return wrapper(client, *args, **kwargs)
                    finally:
                        client._pgbk8s_in_replan = False

                return replan
            return wrapper

        return make

    def _signal_wrapper(self, original: Callable) -> Callable:
        recorder = self

        def wrapper(client: Any, sig: int | str, service_names: Iterable[str]) -> Any:
            names = tuple(service_names)
            result = original(client, sig, names)
            name = signal.Signals(sig).name if isinstance(sig, int) else str(sig)
            recorder.calls.append(
                PebbleCall(client._container_name, "signal", names, name, time.monotonic())
            )
            return result

        return wrapper

    def _owner_wrapper(self, kind: str) -> Callable[[Callable], Callable]:
        def make(original: Callable) -> Callable:
            def wrapper(client: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
                host = Path(client._root) / str(path).lstrip("/")
                existed = host.exists()
                result = original(client, path, *args, **kwargs)
                # Pebble writes a new file on every push; make_dir leaves existing dirs alone.
                if kind == "push" or not existed:
                    PebbleStandIn.chown(
                        host,
                        **{k: kwargs.get(k) for k in ("user", "group", "user_id", "group_id")},
                    )
                return result

            return wrapper

        return make


# --------------------------------------------------------------------------------------------
# Services and their processes
# --------------------------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """A running service: its process, the definition it was started from, its log."""

    name: str
    spec: ServiceSpec
    proc: subprocess.Popen
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """PID of the service's own process (every wrapper execs in place)."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process still runs (``poll`` reaps it: no zombie counts as alive)."""
        return self.proc.poll() is None

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


_NAMESPACE_SCRIPT = """set -eu
mount -t tmpfs -o mode=0700 pgbk8s-scratch {scratch}
{overlays}
{binds}
cd {workdir}
exec {drop} "$@"
"""


class PebbleProcessRunner:
    """Runs a container's Pebble services as real processes, its paths bind-mounted from the host.

    Args:
        mounts: container path -> host directory, e.g. ``{"/var/lib/pgbouncer": tmp_dir}``
            (the same directory given to Scenario as ``testing.Mount(source=...)``).
        path_dirs: directories put first on the services' ``PATH``; by default the directory of
            the PgBouncer the tests use.
        workdir: where logs and the namespace scratch directory go; a fresh temp dir by default.
        enter_argv: a command prefix that execs its command somewhere else, e.g.
            ``nsenter --net=<pod namespace> --`` (:class:`~harness.network.PodNetwork`);
            empty for the host's network.
    """

    def __init__(
        self,
        mounts: Mapping[str, Path] | Path,
        *,
        path_dirs: Iterable[str] | None = None,
        workdir: Path | None = None,
        enter_argv: Iterable[str] = (),
    ):
        self.enter_argv = list(enter_argv)
        if isinstance(mounts, Path | str):
            mounts = {CONTAINER_PATH: Path(mounts)}
        self.mounts = {str(PurePosixPath(k)): Path(v).resolve() for k, v in mounts.items()}
        for location in self.mounts:
            if not location.startswith("/") or location == "/":
                raise ValueError(f"cannot mount over {location!r}")
        if path_dirs is None:
            path_dirs = [str(Path(pgbouncer_binary()).parent)]
        self.path_dirs = list(path_dirs)
        self.quiet: set[str] = set()
        """Services that log nothing when they start (the exporter): never waited for."""
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pgbk8s-runner-"))
        self.processes: dict[str, ServiceProcess] = {}
        self.history: list[tuple[str, str]] = []
        self.pebble = PebbleStandIn(self.mounts, processes=self)
        """Pebble's behaviour (plan, statuses, the definitions processes started from, exit
        policies): the stand-in the bench serves too; this runner is its process backend."""
        self.ready: str | None = None
        """The log line a started service prints when ready, waited for after each start (a
        replay's ``ready`` argument overrides it for that replay); None to not wait."""
        self._ready: str | None = None
        self._timeout = 15.0

    @property
    def known(self) -> dict[str, ServiceSpec]:
        """Every service started, with the definition it was last started from."""
        return self.pebble.started

    # -- context management ----------------------------------------------------------------

    def __enter__(self) -> PebbleProcessRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process, then remove the runner's own work directory."""
        self.stop_all()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- one service -----------------------------------------------------------------------

    def _script(self, scratch: Path, spec: ServiceSpec) -> str:
        overlays: list[str] = []
        binds: list[str] = []
        overlaid: dict[str, int] = {}
        for location, source in sorted(self.mounts.items()):
            if not Path(location).exists():
                ancestor = Path(location).parent
                while not ancestor.exists():
                    ancestor = ancestor.parent
                anc = str(ancestor)
                if anc == "/":
                    raise ValueError(f"no existing ancestor below / for {location}")
                if anc not in overlaid:
                    n = overlaid[anc] = len(overlaid)
                    upper, work = scratch / f"{n}u", scratch / f"{n}w"
                    for path in (upper, work, ancestor):
                        if any(c in str(path) for c in ",:"):
                            raise ValueError(f"path unusable in overlay options: {path}")
                    overlays.append(f"mkdir {shlex.quote(str(upper))} {shlex.quote(str(work))}")
                    opts = f"lowerdir={anc},upperdir={upper},workdir={work}"
                    overlays.append(
                        f"mount -t overlay pgbk8s-overlay -o {shlex.quote(opts)} {shlex.quote(anc)}"
                    )
                binds.append(f"mkdir -p {shlex.quote(location)}")
            binds.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(location)}")
        # Set again after the credential change, which clears it: if the test process dies
        # without cleaning up, the kernel kills the service.
        drop = "setpriv --pdeathsig SIGKILL"
        if spec.user:
            entry = pwd.getpwnam(spec.user)
            group = spec.group or grp.getgrgid(entry.pw_gid).gr_name
            drop += f" --reuid={shlex.quote(spec.user)} --regid={shlex.quote(group)} --init-groups"
        elif spec.group:
            drop += f" --regid={shlex.quote(spec.group)} --clear-groups"
        drop += " --"
        return _NAMESPACE_SCRIPT.format(
            scratch=shlex.quote(str(scratch)),
            overlays="\n".join(overlays),
            binds="\n".join(binds),
            workdir=shlex.quote(spec.working_dir or "/"),
            drop=drop,
        )

    def _env(self, spec: ServiceSpec) -> dict[str, str]:
        env = {"PATH": ":".join([*self.path_dirs, BASE_PATH]), "LANG": "C.UTF-8"}
        if spec.user:
            entry = pwd.getpwnam(spec.user)
            env.update(HOME=entry.pw_dir, USER=spec.user, LOGNAME=spec.user)
        else:
            env["HOME"] = "/root"
        env.update(dict(spec.environment))
        return env

    def _argv(self, scratch: Path, spec: ServiceSpec, name: str, command: list[str]) -> list[str]:
        """``command`` wrapped: parent-death signal, the pod's network, private mounts, user."""
        return [
            "setpriv",
            "--pdeathsig",
            "SIGKILL",
            "--",
            *self.enter_argv,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            self._script(scratch, spec),
            f"pgbk8s-{name}",
            *command,
        ]

    def start(
        self, name: str, spec: ServiceSpec | pebble.Service | Mapping[str, Any]
    ) -> ServiceProcess:
        """Start one service (it must not be running)."""
        if not isinstance(spec, ServiceSpec):
            spec = ServiceSpec.from_service(spec)
        current = self.processes.get(name)
        if current is not None and current.alive():
            raise ProcessError(f"service {name} is already running (pid {current.pid})")
        scratch = self.workdir / f"ns-{name}"
        scratch.mkdir(mode=0o700, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        argv = self._argv(scratch, spec, name, spec.argv())
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(spec),
                cwd="/",
                start_new_session=True,  # Pebble gives each service its own process group
            )
        service = ServiceProcess(name=name, spec=spec, proc=proc, log_path=log_path)
        self.processes[name] = service
        self.history.append(("start", name))
        self.pebble.started[name] = spec
        self.pebble.statuses[name] = ACTIVE
        logger.info("started %s (pid %s): %s", name, proc.pid, spec.command)
        return service

    def stop(self, name: str, grace: float | None = None) -> None:
        """Stop like Pebble: SIGTERM, wait ``kill-delay``, then SIGKILL; always reaped."""
        if self.pebble.statuses.get(name) == ACTIVE:
            self.pebble.statuses[name] = INACTIVE
        service = self.processes.pop(name, None)
        if service is None:
            return
        self.history.append(("stop", name))
        proc = service.proc
        if proc.poll() is not None:
            return
        delay = service.spec.kill_delay if grace is None else grace
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)

    def signal(self, names: Iterable[str], sig: int | str = signal.SIGHUP) -> None:
        """Send a signal to running services; an unknown or dead service is an error (as Pebble)."""
        try:
            self.pebble.signal(names, sig)
        except PebbleError as exc:
            raise ProcessError(str(exc)) from exc

    def reload(self, names: Iterable[str]) -> None:
        """SIGHUP: PgBouncer re-reads its configuration and keeps its clients."""
        self.signal(names, signal.SIGHUP)

    def restart(
        self, names: Iterable[str], ready: str | None = None, timeout: float = 15.0
    ) -> None:
        """Restart services one at a time; wait for ``ready`` in each log before the next."""
        for name in names:
            service = self.processes.get(name)
            if service is None:
                raise ProcessError(f"cannot restart {name}: not started by this runner")
            spec = service.spec
            self.stop(name)
            mark = self.log_offset(name)
            self.start(name, spec)
            if ready and name not in self.quiet:
                self.wait_for_log(name, ready, timeout=timeout, after=mark)

    def stop_all(self, grace: float | None = None) -> None:
        """Stop every service (each by its own PID, reaped)."""
        for name in list(self.processes):
            try:
                self.stop(name, grace)
            except Exception:  # keep stopping the others; the failure is logged
                logger.exception("could not stop %s", name)

    # -- observing ---------------------------------------------------------------------------

    def running(self) -> set[str]:
        """Names of the services whose process is alive."""
        return {name for name, svc in self.processes.items() if svc.alive()}

    def exited(self) -> dict[str, int]:
        """Services that died without being stopped, with their exit codes.

        Every crash seen so far (even one Pebble's ``on-failure`` restarted since) and the ends
        not yet reaped.
        """
        return {
            **dict(self.pebble.crashes),
            **{
                name: svc.proc.returncode
                for name, svc in self.processes.items()
                if svc.proc.poll() is not None
            },
        }

    def logs(self, name: str) -> str:
        """The log of a service (all its runs, appended)."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_offset(self, name: str) -> int:
        """Current length of a service's log, to wait for text written after this point."""
        return len(self.logs(name))

    def wait_for_log(self, name: str, text: str, timeout: float = 15.0, after: int = 0) -> None:
        """Block until ``text`` appears in the service's log after offset ``after``."""
        deadline = time.monotonic() + timeout
        while text not in self.logs(name)[after:]:
            service = self.processes.get(name)
            if service is None or not service.alive():
                code = service.proc.returncode if service else None
                raise ProcessError(
                    f"{name} exited ({code}) before logging {text!r}:\n{self.logs(name)[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{name} did not log {text!r} in {timeout}s:\n{self.logs(name)[-3000:]}"
                )
            time.sleep(0.02)

    # -- the process backend of the Pebble stand-in -------------------------------------------

    def launch(self, name: str, spec: ServiceSpec) -> None:
        """Start a service's process and wait for its ready line (see :meth:`apply`)."""
        self.processes.pop(name, None)
        mark = self.log_offset(name)
        self.start(name, spec)
        ready = self._ready or self.ready
        if ready and name not in self.quiet:
            self.wait_for_log(name, ready, timeout=self._timeout, after=mark)

    def terminate(self, name: str) -> None:
        """Stop a service's process like Pebble (:meth:`stop`)."""
        self.stop(name)

    def send(self, name: str, sig: signal.Signals) -> None:
        """Signal a service's process."""
        self.processes[name].proc.send_signal(sig)
        self.history.append((sig.name, name))

    def exit_code(self, name: str) -> int | None:
        """The exit code of a process that ended by itself; None while it runs (or has none)."""
        service = self.processes.get(name)
        return None if service is None else service.proc.poll()

    def forget(self, name: str) -> None:
        """Drop a process that ended by itself."""
        self.processes.pop(name, None)

    def settled(self, name: str) -> bool:
        """Whether a process restarted by its exit policy is still up a second later."""
        service = self.processes.get(name)
        if service is None:
            return False
        try:
            service.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return True
        return False

    def run(self, argv: list[str], spec: ServiceSpec) -> tuple[int, bytes, bytes]:
        """``exec``: run a command as a service would be run, to its end."""
        scratch = Path(tempfile.mkdtemp(prefix="exec-", dir=self.workdir))
        try:
            done = subprocess.run(
                self._argv(scratch, spec, "exec", argv),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._env(spec),
                cwd="/",
                timeout=60,
                check=False,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return done.returncode, done.stdout, done.stderr

    # -- replaying what the charm asked for --------------------------------------------------

    def apply(
        self,
        calls: Iterable[PebbleCall],
        services: Mapping[str, pebble.Service | ServiceSpec | Mapping[str, Any]],
        *,
        ready: str | None = None,
        timeout: float = 15.0,
    ) -> SyncReport:
        """Replay recorded Pebble calls on the Pebble stand-in, so on real processes.

        Args:
            calls: the calls for this container, in order (``PebbleRecorder.for_container``).
            services: the plan's services after the run (``out.get_container(n).plan.services``).
            ready: a log line each started service must print before the next step (PgBouncer:
                ``"process up"``); None to not wait.
            timeout: how long to wait for ``ready``.

        Returns:
            what was started, stopped, restarted and signalled.
        """
        self.set_plan(services)
        self._ready, self._timeout = ready, timeout
        report = SyncReport()
        last_signal: float | None = None
        try:
            for call in calls:
                if call.action == "signal" and last_signal is not None and call.at:
                    time.sleep(min(max(call.at - last_signal, 0.0), MAX_REPLAYED_GAP_S))
                if call.action == "signal":
                    last_signal = call.at or None
                    done = self.pebble.signal(call.services, call.signal or "SIGHUP")
                elif call.action in ("replan", "autostart"):
                    done = getattr(self.pebble, call.action)()
                else:  # start, stop, restart
                    done = getattr(self.pebble, call.action)(call.services)
                for key in ("started", "stopped", "restarted", "signalled"):
                    getattr(report, key).extend(getattr(done, key))
        except PebbleError as exc:
            raise ProcessError(str(exc)) from exc
        finally:
            self._ready = None
        return report

    def set_plan(
        self, services: Mapping[str, pebble.Service | ServiceSpec | Mapping[str, Any]]
    ) -> None:
        """Make ``services`` the stand-in's plan (Scenario keeps the layers; this is their sum)."""
        plan = {name: ServiceSpec.from_service(svc).to_dict() for name, svc in services.items()}
        self.pebble.layers = {"plan": {"services": plan}}

    def reap(self) -> dict[str, str]:
        """Apply each ended process's exit policy (:meth:`PebbleStandIn.reap`).

        A process restarted by its policy is not waited for: whether it stays up is the answer.

        Returns:
            the services whose status changed, with their new status.
        """
        saved, self.ready = self.ready, None
        try:
            return self.pebble.reap()
        finally:
            self.ready = saved

    def sync(
        self,
        services: Mapping[str, pebble.Service | ServiceSpec | Mapping[str, Any]],
        active: Iterable[str] | None = None,
        *,
        ready: str | None = None,
        timeout: float = 15.0,
    ) -> SyncReport:
        """State-only fallback: make the processes match a plan and the services' statuses.

        Starts services in ``active`` (default: every ``startup: enabled`` service) that are not
        running, stops running ones that are not in it or left the plan, and restarts those whose
        definition changed. It cannot see reloads: prefer :meth:`apply` with a recording.
        """
        self.set_plan(services)
        specs = self.pebble.services()
        wanted = (
            set(active) & set(specs)
            if active is not None
            else {n for n, s in specs.items() if s.startup == "enabled"}
        )
        report = SyncReport()
        self._ready, self._timeout = ready, timeout
        try:
            report.stopped = self.pebble.stop(sorted(self.running() - wanted)).stopped
            for name in sorted(wanted):
                if name in self.running() and self.known.get(name) != specs[name]:
                    report.restarted += self.pebble.restart([name]).restarted
                elif name not in self.running():
                    self.pebble.statuses[name] = INACTIVE
                    report.started += self.pebble.start([name]).started
        finally:
            self._ready = None
        return report


@contextlib.contextmanager
def running(mounts: Mapping[str, Path] | Path, **kwargs: Any) -> Iterator[PebbleProcessRunner]:
    """A runner whose processes are all stopped when the block ends, however it ends."""
    runner = PebbleProcessRunner(mounts, **kwargs)
    try:
        yield runner
    finally:
        runner.close()
