"""Run the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel on a model repository.

The wheel ships a real Triton server (core 2.51) with the python backend and the ensemble
scheduler, but no onnxruntime / TensorRT backends (those live in the NGC container). Running it
outside PyTriton takes three things, all done here without writing into site-packages:

- a backend directory of our own whose ``python/`` holds symlinks to the wheel's python backend
  library, its ``triton_python_backend_utils.py`` and the stub built for the running Python
  (symlinks keep the stub's relative library paths resolving inside the wheel);
- ``LD_LIBRARY_PATH`` with the wheel's ``nvidia_pytriton.libs``;
- ``PATH`` with this interpreter's ``bin`` first: the stub takes its Python environment from
  ``PATH`` (not ``PYTHONPATH``), which is how the models import ``avsal_deploy``.

Every endpoint binds to ``host`` (127.0.0.1 unless asked otherwise: the server has no
authentication). ``avsal serve`` listens on Triton's own ports (:data:`DEFAULT_PORTS`: HTTP 8000,
gRPC 8001, metrics 8002); a :class:`TritonServer` made without ports takes free ones (tests, several
servers on one machine). The CUDA / NVML / DCGM lines a CPU-only machine logs at start are harmless.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from avsal_deploy import interrupt
from avsal_deploy.errors import AvsalError, BackendUnavailableError

#: The address the server binds to unless told otherwise (loopback: no authentication).
HOST = "127.0.0.1"
# Error lines every CPU-only start logs; not worth showing a user.
HARMLESS_ERRORS = ("CudaDriverHelper", "CUDA driver", "NVML", "DCGM", "pinned memory")
_ERROR_LINE = re.compile(r"^(E\d{4} |error: |\[libprotobuf ERROR)")
SERVE_HINT = "install the 'serve' extra: pip install 'avsal-deploy[serve]'"


SHM_POOL_BYTES = 16 * 2**20  # per python-backend stub (tmpfs: allocated up front, physically)
SHM_GROWTH_BYTES = 16 * 2**20


#: gRPC inference request/response objects the server keeps for reuse (see command()).
GRPC_POOL_SIZE = 0
#: Allocations of at least this size are mmapped by glibc in the server and its stubs (see start()).
MMAP_THRESHOLD_BYTES = 1 << 20
#: glibc malloc arenas of the server and its stubs (see start()).
MALLOC_ARENAS = 1


class TritonServerError(AvsalError):
    """The server failed to start, to become ready, or died while serving."""


@dataclass(frozen=True)
class Ports:
    """HTTP, gRPC and metrics ports; ``None`` picks a free one at start."""

    http: int | None = None
    grpc: int | None = None
    metrics: int | None = None


#: Triton's own ports, the defaults of ``avsal serve`` (and of a client without a URL).
DEFAULT_PORTS = Ports(8000, 8001, 8002)


@dataclass(frozen=True)
class TritonInstallation:
    """Paths inside the ``nvidia-pytriton`` wheel."""

    binary: Path
    python_backend: Path  # libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for the running Python
    libs: Path  # nvidia_pytriton.libs


def find_tritonserver() -> TritonInstallation:
    """Locate the server binary, the python backend and the stub for this Python in the wheel."""
    try:
        import pytriton
    except ImportError as exc:
        raise BackendUnavailableError(
            f"nvidia-pytriton is not installed: `avsal serve` needs it; {SERVE_HINT}"
        ) from exc
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = TritonInstallation(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parents[1] / "nvidia_pytriton.libs",
    )
    for path in (found.binary, found.python_backend / "libtriton_python.so", found.stub, found.libs):
        if not path.exists():
            raise BackendUnavailableError(
                f"{path}: missing from the nvidia-pytriton wheel (Python {version}); {SERVE_HINT}"
            )
    return found


def make_backend_dir(installation: TritonInstallation, directory: Path) -> Path:
    """A ``--backend-directory`` whose ``python/`` links to the wheel's python backend and stub."""
    python = directory / "python"
    python.mkdir(parents=True, exist_ok=True)
    links = {
        "libtriton_python.so": installation.python_backend / "libtriton_python.so",
        "triton_python_backend_utils.py": installation.python_backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub": installation.stub,
    }
    for name, target in links.items():
        link = python / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return directory


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that is free now (another process may still take it before us)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def child_processes(pid: int) -> dict[int, list[bytes]]:
    """The processes whose parent is ``pid``, with their command lines: {pid: [arg, ...]}."""
    out: dict[int, list[bytes]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out[int(proc.name)] = cmd
    return out


def _reachable(host: str) -> str:
    """The address a client on this machine uses for a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return HOST
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class TritonServer:
    """``tritonserver`` as a subprocess serving ``repo``: ``with TritonServer(repo) as server: ...``.

    ``ports`` default to free ones; every endpoint binds to ``host`` (default 127.0.0.1).
    ``models`` lists the models to load (default: all, ``--load-model=*``). Start-up waits until
    ``/v2/health/ready`` answers 200 (strict readiness: every loaded model ready) or raises
    :class:`TritonServerError` with the tail of the server log. ``stop`` sends SIGTERM, waits
    ``exit_timeout`` seconds (plus a margin) and then kills the process group it started.
    """

    def __init__(
        self,
        repo: str | Path,
        ports: Ports | None = None,
        log_path: str | Path | None = None,
        *,
        host: str = HOST,
        models: Sequence[str] | None = None,
        startup_timeout: float = 120.0,
        exit_timeout: int = 5,
    ) -> None:
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise AvsalError(f"{self.repo}: model repository not found (create it with `avsal triton-repo`)")
        self.host = host
        requested = ports or Ports()
        self.ports = Ports(
            requested.http or free_port(host),
            requested.grpc or free_port(host),
            requested.metrics or free_port(host),
        )
        self._requested_log = Path(log_path) if log_path is not None else None
        self.log_path = self._requested_log  # a temporary file while running when none was given
        self.models = list(models) if models else ["*"]
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._kept_log = ""  # a temporary log's text, kept when its directory is removed at stop
        self.shm_prefix = f"avsal_pb_{uuid.uuid4().hex[:12]}_"

    # ------------------------------------------------------------------ endpoints
    @property
    def http_url(self) -> str:
        return f"http://{_reachable(self.host)}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{_reachable(self.host)}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_reachable(self.host)}:{self.ports.metrics}/metrics"

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server log."""
        if self.log_path is not None and self.log_path.exists():
            text = self.log_path.read_text(errors="replace")
        else:
            text = self._kept_log
        return "\n".join(text.splitlines()[-lines:])

    def log_errors(self, limit: int = 10) -> list[str]:
        """The last ``limit`` error lines of the log, without the harmless CPU-only ones."""
        lines = self.log_tail(lines=1_000_000).splitlines()
        errors = [
            line for line in lines if _ERROR_LINE.match(line) and not any(h in line for h in HARMLESS_ERRORS)
        ]
        return errors[-limit:]

    def _fail(self, problem: str) -> TritonServerError:
        details = (
            self.log_errors()
            or [line for line in self.log_tail(40).splitlines() if line.strip() and line[0] not in "|+"][-10:]
        )
        message = f"{self.repo}: {problem}"
        if details:
            message += "; server log:\n" + "\n".join(details)
        return TritonServerError(message)

    # ------------------------------------------------------------------ life cycle
    def command(self, backend_dir: Path) -> list[str]:
        p = self.ports
        return [
            "--model-repository=" + str(self.repo),
            "--backend-directory=" + str(backend_dir),
            "--disable-auto-complete-config",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            "--strict-readiness=true",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={p.http}",
            f"--grpc-port={p.grpc}",
            f"--metrics-port={p.metrics}",
            f"--exit-timeout-secs={self.exit_timeout}",
            # gRPC request/response objects kept for reuse hold the capacity of the largest tensors
            # they ever carried (8 by default: the server kept +391 MB after 120 fuzzed requests);
            # allocating them per request costs microseconds beside a model's milliseconds.
            f"--grpc-infer-allocation-pool-size={GRPC_POOL_SIZE}",
            # Our own prefix for the python backend's shared-memory pools, so that stop() can remove
            # the ones a killed server or stub leaves in /dev/shm (they are RAM until removed).
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            # Each growth of a pool maps the whole region again in the server and the stub (the old
            # mappings stay), which inflates their RSS though the memory is the same pages. The
            # default 1 MB pools grow in 1 MB steps (the stream model's to ~50 MB in a 10-minute
            # soak: dozens of mappings); pools start at 16 MB and grow 16 MB at a time instead. The
            # backend allocates a pool's pages up front (RAM in /dev/shm): 16 MB per stub.
            f"--backend-config=python,shm-default-byte-size={SHM_POOL_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
        ]

    def start(self) -> TritonServer:
        """Start the server and wait for readiness."""
        if self.is_running():
            return self
        installation = find_tritonserver()
        self._workdir = tempfile.TemporaryDirectory(prefix="avsal-triton-")
        work = Path(self._workdir.name)
        backend_dir = make_backend_dir(installation, work / "backends")
        self.log_path = self._requested_log or work / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._kept_log = ""
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(installation.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # glibc raises its mmap threshold after freeing large blocks (up to 32 MB), after which the
        # tensors of large requests come from the heap, whose freed pages the process keeps: the
        # server's memory then stays at the high-water mark of its largest requests (+120 MB after
        # 240 fuzzed requests, with no gRPC pool). A fixed threshold keeps large buffers mmapped,
        # returned when freed (+30 MB).
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD_BYTES))
        # glibc gives each thread that allocates its own arena (up to 8 per core), and a freed
        # block goes back to the arena it came from: the gRPC threads that received a few huge
        # requests each keep their arena's high-water mark (+128 MB after 2,000 fuzzed requests).
        # One arena returns what they free (+4 MB); the big tensors are mmapped anyway (above).
        env.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(installation.binary), *self.command(backend_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: the python stubs die with it
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            interrupt.check()  # stopped while starting: start() stops the server
            code = self.returncode
            if code is not None:
                raise self._fail(f"tritonserver exited with code {code} during start-up")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        self._stub_counts = {m: len(p) for m, p in self.stubs().items()}
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise self._fail(f"tritonserver not ready after {self.startup_timeout:.0f} s")

    def check_alive(self) -> None:
        """Raise :class:`TritonServerError` (with the log tail) if the server has exited."""
        code = self.returncode
        if code is not None:
            raise self._fail(f"tritonserver exited with code {code}")

    def stubs(self) -> dict[str, list[int]]:
        """The python-backend stub processes of the running server, by model: {model: [pid, ...]}."""
        out: dict[str, list[int]] = {}
        if self.process is None:
            return out
        for pid, cmd in child_processes(self.process.pid).items():
            if not cmd or b"triton_python_backend_stub" not in cmd[0]:
                continue
            for arg in cmd[1:]:
                if arg.endswith(b"model.py"):
                    out.setdefault(Path(arg.decode()).parent.parent.name, []).append(pid)
        return out

    def heal(self) -> list[str]:
        """Reload every python model whose stub process died (killed, crashed, OOM): Triton marks it
        unhealthy and answers its requests with errors until it is loaded again. Returns the models
        reloaded. ``avsal serve`` calls this twice a second, so a lost stub costs the requests in
        flight, not a manual restart."""
        now = {m: len(p) for m, p in self.stubs().items()}
        if not hasattr(self, "_stub_counts"):
            self._stub_counts = now
            return []
        lost = [m for m, n in self._stub_counts.items() if now.get(m, 0) < n]
        for model in lost:
            # Unload first: a load request for a model that is still loaded may keep the broken
            # instance. Then load, and wait until the model is ready with all its stubs again.
            self._repository(model, "unload")
            self._wait(lambda m=model: not self._ready(m), 30.0, f"{model} did not unload")
            self._repository(model, "load")
            want = self._stub_counts[model]
            self._wait(
                lambda m=model, n=want: self._ready(m) and len(self.stubs().get(m, [])) >= n,
                max(60.0, self.startup_timeout),
                f"{model} did not come back after its stub died",
            )
        if lost:
            self._stub_counts = {m: len(p) for m, p in self.stubs().items()}
        return lost

    def _repository(self, model: str, action: str) -> None:
        url = f"{self.http_url}/v2/repository/models/{model}/{action}"
        request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=max(60.0, self.startup_timeout)):
                pass
        except urllib.error.HTTPError as exc:
            if action == "load":
                raise self._fail(f"reloading {model} failed: HTTP {exc.code} {exc.read()[:200]!r}") from exc

    def _ready(self, model: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/models/{model}/ready", timeout=5.0) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _wait(self, condition: Callable[[], bool], timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise self._fail(message)
            time.sleep(0.1)

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL to its process group); returns its exit code."""
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.exit_timeout + 10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self._reap_group(proc.pid)
            self._remove_shm_pools()
        if self._workdir is not None:
            if self._requested_log is None and self.log_path is not None and self.log_path.exists():
                self._kept_log = self.log_path.read_text(errors="replace")
            self._workdir.cleanup()
            self._workdir = None
        return None if proc is None else proc.returncode

    def shm_pools(self) -> list[Path]:
        """The python backend's shared-memory pool files of this server (in /dev/shm)."""
        shm = Path("/dev/shm")
        return sorted(shm.glob(self.shm_prefix + "*")) if shm.is_dir() else []

    def _remove_shm_pools(self) -> None:
        for path in self.shm_pools():
            path.unlink(missing_ok=True)

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """Give stubs left in our process group a moment to exit, then kill them."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
