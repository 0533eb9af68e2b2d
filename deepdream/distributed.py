"""One process, or many started by ``mlx.launch``: the group, rank 0's output, threads per rank,
collectives, and stopping every rank when one fails.

Without a launcher there is one process: every collective returns its input, and nothing here
initialises MLX's distributed layer, starts a thread or opens a socket. Under
``mlx.launch`` (ring, MPI, NCCL, JACCL) the same code runs on every rank, and:

* ``group()``, ``rank()``, ``size()``, ``is_main()``: who this process is; rank 0 alone prints
  (``print0``, ``main_only``) and writes files.
* ``set_rank_threads()`` (called by ``fastlayers._blas`` before MKL loads): each rank gets its
  host's cores divided by the ranks on that host, unless the user set a thread variable.
* ``all_sum``, ``barrier``, ``any_rank``, ``broadcast_bytes``/``broadcast_json``/
  ``broadcast_arrays`` (from rank 0), ``all_gather_bytes``/``gather_json`` (every rank's value,
  on every rank), ``part(n)`` (this rank's contiguous share of n items), ``check_same``.
* ``session(hint)``: the dead-rank watchdog around a job (below); ``write_guard()`` around a
  file write, so a stop never cuts one in half.

Facts measured with mlx 0.32.4 (Linux CPU, ring backend, ranks on one host) that the design
rests on:

* ``mlx.launch`` (ring) starts each rank as ``bash -c '... exec python ...'`` with ``MLX_RANK``
  and ``MLX_HOSTFILE``, the path of a JSON file ``[["ip:port", ...], ...]`` (one list per rank).
  NCCL gets ``MLX_RANK``, ``MLX_WORLD_SIZE``, ``NCCL_HOST_IP``; JACCL ``MLX_RANK``,
  ``MLX_IBV_DEVICES``, ``MLX_JACCL_COORDINATOR``; ``mpirun`` sets ``OMPI_COMM_WORLD_*``
  (Open MPI) or ``PMI_*``/``MPI_LOCALNRANKS`` (MPICH).
* ``mlx.launch -n 1`` writes an empty hostfile, on which ``mx.distributed.init()`` raises a JSON
  parse error; ``group()`` treats it as the single process it is.
* ``all_sum`` and ``all_gather`` reach every rank (any dtype, uint8 included); ``send``/``recv``
  reach only ring neighbours and ``Group.split`` is unsupported, so broadcast and gather here
  are built from ``all_sum``/``all_gather``.
* A peer killed with SIGKILL: the survivor's pending (or next) collective raises
  ``RuntimeError: [ring] connection to a peer was lost`` within 0.1 s, after MLX itself prints
  ``[ring] Socket N was closed by the peer`` lines on stderr. Nothing says which rank it was.
* A peer that stops responding (SIGSTOP here; a host that loses power or its network) leaves
  the survivor blocked in the collective forever, and Python's signal handlers do not run while
  it blocks: Ctrl-C waits, only SIGTERM/SIGKILL end it. ``mx.eval`` releases the GIL, so
  other Python threads keep running meanwhile.
* ``mlx.launch`` exits 0 even when ranks fail. When one rank exits non-zero it prints
  ``Node with rank N exited with code C`` and sends SIGTERM to the others. On Ctrl-C every local
  rank receives SIGINT too (one process group); the launcher itself dies of its
  KeyboardInterrupt (a traceback) and stops relaying the ranks' output, so their last lines are
  lost, and it reports each rank's exit code. A rank frozen by SIGSTOP keeps the launcher
  waiting after the others have ended (its SIGTERM stays pending); the rank must be killed.
  Hence a rank that exits after an agreed stop or a reported error waits for rank 0 to end
  first: the launcher would otherwise cut rank 0 short (SIGTERM) before it has saved or printed.

Hence the watchdog (``session``): rank 0 runs a small TCP hub (an ephemeral port, sent to the
others with ``all_sum``); every other rank connects and the two sides exchange a heartbeat
every ``BEAT_S`` seconds. A connection that closes without a goodbye (a killed rank), a rank
silent for ``SILENT_S`` seconds (a frozen one), or a rank's own error reported over it makes
rank 0 print one line naming that rank, tell every other rank to stop, and exit; the other
ranks exit quietly. If rank 0 is the one that dies, rank 1 prints the line. A collective that
fails in the main thread waits for that verdict instead of printing a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlx.core as mx
    import numpy as np

# fastlayers._blas imports this module before MLX and the BLAS load (the thread count must be
# in the environment before MKL reads it), so mlx, numpy and the rest of the package are
# imported inside the functions that use them.

#: The variables BLAS libraries and OpenMP read their thread count from; one set by the user wins.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
#: Heartbeat period, and the silence after which a rank counts as stopped.
BEAT_S = 2.0
SILENT_S = 30.0
#: How long the hub waits for every rank to connect, and a client for the hub.
CONNECT_S = 60.0
EXIT_FAULT = 1
#: How long rank 0 waits, after another rank reports an error, for its own error to come first.
REPORT_GRACE_S = 3.0


# -- what the launcher told this process (read before MLX loads) ---------------------------

@dataclass(frozen=True)
class Launch:
    """This process's place in a launched job, as the launcher's environment describes it."""

    backend: str
    rank: int
    size: int
    ranks_on_host: int            # ranks sharing this host's cores (1 where the launcher does not say)
    root_hosts: tuple[str, ...]   # addresses of rank 0 the environment names (may be empty)


def _read_json_file(path: str) -> Any:
    text = Path(path).read_text().strip()
    return json.loads(text) if text else None


def launch_env(environ: dict[str, str] | os._Environ = os.environ) -> Launch | None:
    """The launcher's description of this job, or None without one (or with a single rank)."""
    env = dict(environ)
    try:
        if "MLX_RANK" in env and env.get("MLX_HOSTFILE"):
            hosts = _read_json_file(env["MLX_HOSTFILE"])
            if not hosts or len(hosts) < 2:
                return None
            rank = int(env["MLX_RANK"])
            ips = [tuple(sorted(a.rsplit(":", 1)[0] for a in h)) for h in hosts]
            return Launch("ring", rank, len(hosts), ips.count(ips[rank]), ips[0])
        if "MLX_RANK" in env and env.get("MLX_WORLD_SIZE"):
            size = int(env["MLX_WORLD_SIZE"])
            root = (env["NCCL_HOST_IP"],) if env.get("NCCL_HOST_IP") else ()
            return Launch("nccl", int(env["MLX_RANK"]), size, 1, root) if size > 1 else None
        if "MLX_RANK" in env and env.get("MLX_IBV_DEVICES"):
            devices = _read_json_file(env["MLX_IBV_DEVICES"]) or []
            coordinator = env.get("MLX_JACCL_COORDINATOR", "")
            root = (coordinator.rsplit(":", 1)[0],) if coordinator else ()
            return Launch("jaccl", int(env["MLX_RANK"]), len(devices), 1, root) if len(devices) > 1 else None
        for rank_var, size_var, local_var in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"),
                                              ("PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS")):
            if env.get(rank_var) and env.get(size_var):
                size = int(env[size_var])
                return Launch("mpi", int(env[rank_var]), size, int(env.get(local_var) or 1), ()) if size > 1 else None
    except (OSError, ValueError, TypeError, IndexError):
        return None  # MLX reports a malformed launch itself, with the backend's own message
    return None


def host_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: The threads per rank this module set (None: the user's variables or the libraries' defaults).
rank_threads: int | None = None


def set_rank_threads(environ: os._Environ | dict[str, str] = os.environ) -> int | None:
    """Give each rank its host's cores divided by the ranks on that host (before the BLAS loads).

    Several ranks on one host each running a BLAS sized for the whole machine oversubscribe the
    cores; the user's own thread variables, when any is set, are left alone. Returns the count set.
    """
    global rank_threads
    launch = launch_env(environ)
    if launch is None or launch.ranks_on_host <= 1 or any(environ.get(v) for v in THREAD_VARS):
        return None
    rank_threads = max(1, host_cores() // launch.ranks_on_host)
    for var in THREAD_VARS:
        environ[var] = str(rank_threads)
    return rank_threads


def describe() -> str:
    """One phrase for --info and notices: ranks, and threads per rank."""
    n = size()
    threads = rank_threads or next((int(os.environ[v]) for v in THREAD_VARS if os.environ.get(v, "").isdigit()), None)
    if n == 1:
        return f"1 process, {threads} thread{'s' * (threads != 1)}" if threads else \
            f"1 process, the libraries' default threads ({host_cores()} cores)"
    each = f"{threads} thread{'s' * (threads != 1)} each" if threads else "the libraries' default threads"
    return f"{n} ranks ({group_backend()}), {each}"


# -- the group --------------------------------------------------------------------------

@functools.cache
def group() -> "mx.distributed.Group":
    """The job's process group (size 1 without a launcher)."""
    import mlx.core as mx

    try:
        return mx.distributed.init()
    except RuntimeError as exc:
        if launch_env() is not None:
            from deepdream.errors import DreamError

            raise DreamError(f"cannot join the other ranks ({' '.join(str(exc).split())}); "
                             "check the hostfile and that every host runs the same command") from None
        # `mlx.launch -n 1`: an empty hostfile, i.e. one process.
        for var in ("MLX_HOSTFILE", "MLX_RANK"):
            os.environ.pop(var, None)
        return mx.distributed.init()


def group_backend() -> str:
    launch = launch_env()
    return launch.backend if launch else "none"


@functools.cache
def launched() -> bool:
    """Whether a launcher started this process (else it is the one process, and MLX's distributed
    layer is never initialised)."""
    return launch_env() is not None or any(v in os.environ for v in ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))


def rank() -> int:
    return group().rank() if launched() else 0


def size() -> int:
    return group().size() if launched() else 1


def is_main() -> bool:
    """Rank 0: the one rank that prints and writes files."""
    return rank() == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0; nothing on the others (flushed: launchers relay output through pipes)."""
    if is_main():
        print(*args, **{"flush": True, **kwargs})


def main_only(function: Callable[[str], None]) -> Callable[[str], None]:
    """``function`` on rank 0, a no-op elsewhere (for notice and log callbacks)."""
    return function if is_main() else (lambda _message: None)


def part(n: int, at: int | None = None, of: int | None = None) -> slice:
    """Rank ``at``'s contiguous share of ``n`` items (this rank's by default); sizes differ by at most one."""
    at = rank() if at is None else at
    of = size() if of is None else of
    return slice(at * n // of, (at + 1) * n // of)


# -- collectives (no-ops with one process) ----------------------------------------------

def all_sum(x: "mx.array") -> "mx.array":
    """The element-wise sum over ranks, evaluated. A failed peer ends this process through the
    watchdog (one line naming it) instead of raising MLX's error."""
    return _collective_op("all_sum", x)


def all_gather(x: "mx.array") -> "mx.array":
    """Every rank's ``x`` stacked along the first axis (same shape on every rank), evaluated."""
    return _collective_op("all_gather", x)


def _collective_op(name: str, x: "mx.array") -> "mx.array":
    import mlx.core as mx

    if size() == 1:
        return x
    with _collective():
        out = getattr(mx.distributed, name)(x, group=group())
        mx.eval(out)
    return out


def barrier() -> None:
    import mlx.core as mx

    all_sum(mx.zeros((1,)))


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any."""
    import mlx.core as mx

    return bool(all_sum(mx.array([1.0 if flag else 0.0])).item() > 0) if size() > 1 else flag


def broadcast_bytes(data: bytes | None) -> bytes:
    """Rank 0's ``data`` on every rank (the others pass None)."""
    import mlx.core as mx
    import numpy as np

    if size() == 1:
        return data or b""
    mine = data if is_main() else b""
    length = int(all_sum(mx.array([len(mine)], dtype=mx.int64)).item())
    buffer = np.zeros(length, np.uint8)
    if is_main():
        buffer[:] = np.frombuffer(mine, np.uint8)
    return bytes(np.array(all_sum(mx.array(buffer))))


def broadcast_json(value: Any) -> Any:
    """Rank 0's JSON-serialisable ``value`` on every rank."""
    if size() == 1:
        return value
    return json.loads(broadcast_bytes(json.dumps(value).encode() if is_main() else None))


def broadcast_arrays(arrays: Sequence["np.ndarray"]) -> list["np.ndarray"]:
    """Rank 0's values of ``arrays`` on every rank; each rank passes arrays of the same shapes and dtypes."""
    import numpy as np

    if size() == 1:
        return list(arrays)
    flat = broadcast_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays) if is_main() else None)
    out, offset = [], 0
    for a in arrays:
        out.append(np.frombuffer(flat, a.dtype, a.size, offset).reshape(a.shape).copy())
        offset += a.nbytes
    return out


def all_gather_bytes(data: bytes) -> list[bytes]:
    """Every rank's ``data``, in rank order, on every rank."""
    import mlx.core as mx
    import numpy as np

    if size() == 1:
        return [data]
    lengths = np.array(all_gather(mx.array([len(data)], dtype=mx.int64))).reshape(-1)
    padded = np.zeros(int(lengths.max()) if len(lengths) else 0, np.uint8)
    padded[:len(data)] = np.frombuffer(data, np.uint8)
    rows = np.array(all_gather(mx.array(padded[None]))).reshape(len(lengths), -1)
    return [bytes(row[:n]) for row, n in zip(rows, lengths)]


def gather_json(value: Any) -> list[Any]:
    """Every rank's JSON-serialisable ``value``, in rank order, on every rank."""
    return [json.loads(b) for b in all_gather_bytes(json.dumps(value).encode())]


def check_same(values: dict[str, str], fix: str) -> None:
    """Raise (on rank 0) when a rank's ``values`` differ from rank 0's: e.g. digests of the data and
    weights every host must hold at the same path. The other ranks go on and are stopped by rank 0."""
    if size() == 1:
        return
    every = gather_json(values)
    for r, theirs in enumerate(every[1:], start=1):
        for key, value in every[0].items():
            if theirs.get(key) != value and is_main():
                from deepdream.errors import DreamError

                raise DreamError(f"{rank_name(r)} has another {key} than rank 0; {fix}")


def rank_name(r: int) -> str:
    """``rank 1 (host 10.0.0.2)`` where the launcher names the hosts, else ``rank 1``."""
    launch = launch_env()
    if launch and launch.backend == "ring":
        hosts = _read_json_file(os.environ["MLX_HOSTFILE"])
        return f"rank {r} (host {hosts[r][0].rsplit(':', 1)[0]})"
    return f"rank {r}"


# -- the watchdog -----------------------------------------------------------------------

_write_lock = threading.RLock()
_writing = 0                     # write_guard depth in the main thread
_exit_after_write: int | None = None


@contextmanager
def write_guard() -> Iterator[None]:
    """Around a file write: a stop (the watchdog's, or SIGTERM's) waits for the write to finish."""
    global _writing
    with _write_lock:
        _writing += 1
        try:
            yield
        finally:
            _writing -= 1
            if _writing == 0 and _exit_after_write is not None:
                os._exit(_exit_after_write)


class _Link:
    """One line-based TCP connection: the hub's end for one rank, or a rank's end to the hub."""

    def __init__(self, sock: socket.socket, peer: int, buffer: bytes = b"") -> None:
        self.sock, self.peer = sock, peer
        self.buffer = buffer
        self.heard = time.monotonic()
        self.said_bye = False
        self._send_lock = threading.Lock()   # the main thread and the watchdog both send
        sock.setblocking(False)

    def send(self, line: str) -> bool:
        try:
            with self._send_lock:
                self.sock.sendall(line.encode() + b"\n")
            return True
        except OSError:
            return False

    def receive(self) -> list[str] | None:
        """The complete lines that arrived; None when the other side closed."""
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not chunk:
            return None
        self.heard = time.monotonic()
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode(errors="replace") for line in lines]


class Watchdog:
    """Rank 0's hub and every other rank's link to it (see the module docstring)."""

    def __init__(self, hint: str) -> None:
        self.hint = hint
        self.rank, self.size = rank(), size()
        self.links: dict[int, _Link] = {}
        self.closing = False
        self.verdict = threading.Event()    # set once a stop is decided (the process is ending)
        self.root_done = False              # rank 0 said goodbye (clients)
        self.stop_by: float | None = None   # rank 0 ordered a stop: leave once it is gone (clients)
        self.reported: tuple[float, str] | None = None  # a rank's own error, printed after a grace (hub)
        self.root_gone = threading.Event()  # rank 0's link closed (clients)
        self.leaving: int | None = None     # the exit status this rank has settled on, if any
        self._lock = threading.Lock()
        if self.rank == 0:
            self._listener = socket.create_server(("", 0), backlog=self.size)
            port = self._listener.getsockname()[1]
            address = json.dumps({"port": port, "hosts": _own_addresses()}).encode()
        else:
            address = None
        where = json.loads(broadcast_bytes(address))
        if self.rank == 0:
            self._accept_all()
        else:
            self._connect(where)
        self._thread = threading.Thread(target=self._run, name="deepdream-watchdog", daemon=True)
        self._thread.start()

    # setup

    def _accept_all(self) -> None:
        deadline = time.monotonic() + CONNECT_S
        self._listener.settimeout(1.0)
        while len(self.links) < self.size - 1:
            if time.monotonic() > deadline:
                missing = sorted(set(range(1, self.size)) - set(self.links))
                self._fault(f"{rank_name(missing[0])} did not reach rank 0's watchdog within {CONNECT_S:.0f} s "
                            "(a firewall between the hosts?)")
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            sock.settimeout(CONNECT_S)
            received = b""
            try:
                while b"\n" not in received and (chunk := sock.recv(4096)):
                    received += chunk
            except OSError:
                sock.close()
                continue
            first, _, rest = received.partition(b"\n")
            hello = first.decode(errors="replace").split()
            if len(hello) == 2 and hello[0] == "hello" and hello[1].isdigit():
                self.links[int(hello[1])] = _Link(sock, int(hello[1]), rest)
            else:
                sock.close()
        self._listener.close()

    def _connect(self, where: dict[str, Any]) -> None:
        errors = []
        for host in [*launch_hosts(), *where["hosts"]]:
            try:
                sock = socket.create_connection((host, where["port"]), timeout=5)
            except OSError as exc:
                errors.append(f"{host}: {exc.strerror or exc}")
                continue
            sock.sendall(f"hello {self.rank}\n".encode())
            self.links[0] = _Link(sock, 0)
            return
        from deepdream.errors import DreamError

        raise DreamError(f"rank {self.rank} cannot reach rank 0's watchdog on port {where['port']} "
                         f"({'; '.join(dict.fromkeys(errors))}); allow TCP connections between the hosts")

    # the loop

    def _run(self) -> None:
        last_beat = 0.0
        while not self.closing:
            now = time.monotonic()
            if now - last_beat >= BEAT_S:
                for link in list(self.links.values()):
                    link.send("beat")
                last_beat = now
            socks = [link.sock for link in self.links.values()]
            try:
                readable, _, _ = select.select(socks, [], [], BEAT_S / 4)
            except (OSError, ValueError):
                readable = []
            for link in list(self.links.values()):
                if link.sock in readable:
                    lines = link.receive()
                    if lines is None:
                        self._closed(link)
                        continue
                    for line in lines:
                        self._message(link, line)
                if self.closing:
                    return
                if not link.said_bye and time.monotonic() - link.heard > SILENT_S:
                    self._lost(link, f"stopped responding ({SILENT_S:.0f} s without a heartbeat: frozen, "
                                     "or its host or network is down)")
            if self.stop_by is not None and time.monotonic() > self.stop_by:
                self._exit_quietly()
            if self.reported is not None and time.monotonic() > self.reported[0]:
                self._fault(self.reported[1], add_hint=False)

    def _message(self, link: _Link, line: str) -> None:
        kind, _, detail = line.partition(" ")
        if kind == "bye":
            link.said_bye = True
            if link.peer == 0:
                self.root_done = True
        elif kind == "stop":
            # Rank 0 prints its line before it exits; leaving first could let the launcher
            # end rank 0 (it stops every rank once one exits non-zero) before it has.
            self.stop_by = time.monotonic() + 2 * BEAT_S
            self.leaving = EXIT_FAULT
        elif kind == "fail" and self.rank == 0 and self.reported is None:
            # A mistake every rank makes (a bad flag, a missing folder) is rank 0's to report, as
            # one process would; a rank's error of its own is printed once rank 0 has not failed too.
            self.reported = (time.monotonic() + REPORT_GRACE_S, f"rank {link.peer}: {detail}")

    def _closed(self, link: _Link) -> None:
        link.sock.close()
        del self.links[link.peer]
        if link.peer == 0:
            self.root_gone.set()
        if self.stop_by is not None:
            self._exit_quietly()
        if link.said_bye:
            return
        self._lost(link, "ended without finishing (killed, or its process crashed)")

    def _lost(self, link: _Link, how: str) -> None:
        if self.rank == 0:
            self._fault(f"{rank_name(link.peer)} {how}")
        elif self.root_done:
            self._exit_quietly()
        elif self.rank == 1:  # rank 0 is gone: the next rank says so, once
            self._fault(f"{rank_name(0)} {how}")
        else:
            self._exit_quietly()

    # ending

    def _fault(self, reason: str, add_hint: bool = True) -> None:
        """Say what failed (one line), stop every other rank, and end this process."""
        with self._lock:
            if self.verdict.is_set():
                return
            self.verdict.set()
        self.closing = True
        _say(f"error: {reason}; every rank stopped. {self.hint}" if add_hint else f"error: {reason}")
        for link in self.links.values():
            link.send("stop")
        self._end(EXIT_FAULT)

    def _exit_quietly(self) -> None:
        with self._lock:
            if self.verdict.is_set():
                return
            self.verdict.set()
        self.closing = True
        self._end(EXIT_FAULT)

    def _end(self, code: int) -> None:
        # A write in progress (a checkpoint) finishes first, so no file is left half-written.
        _write_lock.acquire(timeout=SILENT_S)
        sys.stderr.flush()
        os._exit(code)

    def report(self, message: str) -> None:
        """A non-root rank's own error: rank 0 prints it, naming this rank, and stops every rank;
        this rank waits for that (leaving first would have the launcher end rank 0 before it prints)."""
        link = self.links.get(0)
        self.leaving = EXIT_FAULT
        if link is not None and link.send("fail " + " ".join(message.split())):
            self.verdict.wait(timeout=REPORT_GRACE_S + 2 * BEAT_S)

    def close(self, stop_others: bool = False) -> None:
        """Leave cleanly (a goodbye), or as rank 0 after its own error, stop the others first."""
        self.closing = True
        self._thread.join(timeout=2 * BEAT_S)
        for link in self.links.values():
            link.send("stop" if stop_others else "bye")
        # The sockets stay open until the process has ended (the kernel closes them, after the
        # interpreter's teardown): the other ranks take that as this rank gone.
        _open_until_exit.extend(link.sock.detach() for link in self.links.values())
        self.links.clear()

    def await_root(self) -> None:
        """Wait for rank 0's process to end (it saves, then prints, then exits): leaving first would
        have the launcher, which stops every rank once one exits non-zero, cut rank 0 short."""
        self.root_gone.wait()

    def terminated(self, signum: int, frame: Any) -> None:
        """SIGTERM, which mlx.launch sends every rank once one has failed: the watchdog, which saw
        the failure too, gets a moment to print its line before this process ends."""
        global _exit_after_write
        self.verdict.wait(timeout=1.0)
        code = self.leaving if self.leaving is not None else 128 + signum
        if _writing:  # this handler interrupted the write in this (the main) thread: let it end
            _exit_after_write = code
            return
        os._exit(code)

    def failed_collective(self, exc: BaseException) -> None:
        """The main thread's collective failed: wait for the watchdog's verdict (it ends the process)."""
        deadline = time.monotonic() + SILENT_S + 2 * BEAT_S
        while time.monotonic() < deadline:
            if self.root_done and self.rank != 0:
                self._exit_quietly()
            time.sleep(0.05)
        from deepdream.errors import DreamError

        raise DreamError(f"lost contact with the other ranks ({' '.join(str(exc).split())}). {self.hint}")


def _say(line: str) -> None:
    from tqdm import tqdm  # imported by the session already: the line must not wait for an import

    if rank() != 0:  # rank 0 is gone, maybe in the middle of its progress bar's line: end that line
        line = "\n" + line
    tqdm.write(line, file=sys.stderr)  # below this process's progress bar, if any, not glued to it
    sys.stderr.flush()


def launch_hosts() -> tuple[str, ...]:
    launch = launch_env()
    return launch.root_hosts if launch else ()


def _own_addresses() -> list[str]:
    """Addresses other hosts may reach this one at, best guess first."""
    found = list(launch_hosts())
    try:
        found += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    return list(dict.fromkeys([*found, "127.0.0.1"]))


_watchdog: Watchdog | None = None
_open_until_exit: list[int] = []  # file descriptors


@contextmanager
def _collective() -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:
        if _watchdog is None:
            from deepdream.errors import DreamError

            raise DreamError(f"lost contact with the other ranks ({' '.join(str(exc).split())})") from None
        _watchdog.failed_collective(exc)


@contextmanager
def session(hint: str) -> Iterator[Watchdog | None]:
    """Run a job on every rank under the watchdog; with one process, just run it.

    ``hint`` ends the line printed when a rank fails (what to do next, e.g. how to resume); it
    may be changed on the yielded watchdog as the job learns more. On rank 0 an exception tells
    every other rank to stop, then propagates (the script prints it). On the other ranks a user
    error is sent to rank 0, which prints it with the rank's number, and the rank exits quietly;
    an interrupt ends it quietly (rank 0 reports it), after rank 0 has ended when it is an
    ``errors.Interrupted``: a stop every rank agreed on, whose state rank 0 is saving.
    """
    global _watchdog
    if size() == 1:
        yield None
        return
    from deepdream.errors import EXIT_ERROR, EXIT_INTERRUPTED, USER_ERRORS, Interrupted

    import tqdm  # noqa: F401  (_say's, ready before any fault)

    _watchdog = watchdog = Watchdog(hint)
    previous = signal.signal(signal.SIGTERM, watchdog.terminated)
    try:
        yield watchdog
    except KeyboardInterrupt as exc:
        if rank() != 0:
            if isinstance(exc, Interrupted):  # every rank stopped at the same point; rank 0 saves
                watchdog.leaving = EXIT_INTERRUPTED  # also if the launcher ends this rank meanwhile
                watchdog.await_root()
            watchdog.close()
            raise SystemExit(EXIT_INTERRUPTED) from None
        watchdog.close()
        raise
    except USER_ERRORS as exc:
        if rank() == 0:
            watchdog.close(stop_others=True)
            raise
        watchdog.report(str(exc))
        watchdog.close()
        raise SystemExit(EXIT_ERROR) from None
    except BaseException as exc:
        if rank() == 0:
            watchdog.close(stop_others=True)
        else:
            watchdog.report(f"{type(exc).__name__}: {exc}")
            watchdog.close()
        raise
    else:
        watchdog.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
        _watchdog = None
