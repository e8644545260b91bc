"""Runs inside the action's process group, between the runner and the action: its keeper.

    runner ──fork──▶ keeper (group leader, PR_SET_PDEATHSIG = SIGUSR2) ──fork+exec──▶ action
                        │ waits for the action and exits as it did
                        └ SIGUSR2 (its runner died, even by SIGKILL) ─▶ SIGKILL the whole group

PR_SET_PDEATHSIG alone would only reach the process it is set on, not the action's background
children (`sleep 300 &`), which would then live on under PID 1; the keeper turns the
runner's death into a kill of the whole group. The death signal is SIGUSR2, not SIGTERM,
because SIGTERM is what a cancel sends the group, and that must reach the action with its
grace, not kill it at once. The keeper sets the signal itself, first thing; it is tied to
the runner's thread that forked it, which is its event-loop thread (processes.run_process runs
there), alive as long as the runner. A runner that died before that is seen by getppid().

Kept free of Django and started with `python -I -S`, so it costs a few milliseconds.
A process that leaves the group (setsid) escapes it: that is documented, not handled.
"""

import ctypes
import os
import signal
import sys

PARENT_DIED = signal.SIGUSR2
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _kill_group(signum, frame) -> None:
    os.killpg(0, signal.SIGKILL)  # the keeper included


def _exit_like(status: int) -> None:
    """Leave with the action's exit status, or die by the signal that killed it."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot (and need not) be reset
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status))


def _die_with(runner_pid: int) -> None:
    """Ask for PARENT_DIED when the runner (our parent) dies; if it already has, act now."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, PARENT_DIED, 0, 0, 0) != 0:
        print("tailgate: prctl(PR_SET_PDEATHSIG) failed", file=sys.stderr)
    if os.getppid() != runner_pid:  # it died before the line above
        _kill_group(PARENT_DIED, None)


def main(argv: list[str]) -> None:
    """argv: the runner's pid, then the action's command line."""
    signal.signal(PARENT_DIED, _kill_group)
    _die_with(int(argv[0]))
    argv = argv[1:]
    # A cancel signals the whole group: the action takes it; the keeper waits for it to end.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, PARENT_DIED):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"tailgate: cannot run {argv[0]}: {exc}", file=sys.stderr)
            os._exit(127)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        _exit_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
