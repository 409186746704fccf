"""A throwaway Slurm cluster of two emulated nodes on this machine, for `pytest -m slurm`.

``SlurmCluster(root)`` is a context manager. On entry it starts, as child processes of this one and in
this order:

    munged      its own key and socket (not the system's /etc/munge, /run/munge)
    mariadbd    its own data directory, on 127.0.0.1 only
    slurmdbd    job accounting, so that ``sacct`` answers (the Snakemake Slurm executor polls it)
    slurmctld   cluster CLUSTER, partition PARTITION (default, no time limit) of the NODES
    slurmd      one per node of NODES (``slurmd -N <name>``), each NodeAddr=127.0.0.1 with its own port,
                spool directory, PID and log file; ``cpus`` CPUs and ``memory_mb`` MB each, no GPU

registers the cluster, the account ACCOUNT and the current user in the accounting database
(``AccountingStorageEnforce=associations``: a job with another account is refused), and waits until
every node is idle. Two nodes on one machine: Debian's Slurm runs several slurmd on one host when each
has a name (-N), a Port= of its own and %n in its spool, PID and log paths; so a job can ask for
``--nodes=2`` and a step run one task on each (both on 127.0.0.1, which is all that multi-node code
paths such as ``srun --nodes=2`` and a c10d rendezvous on the first node's NodeAddr need). The CPUs
and memory are declared, not counted (``SlurmdParameters=config_overrides``): 2 x 2 CPUs on this
2-core machine. On exit (even after an error) it cancels the cluster's jobs and stops each daemon
it started by its PID, in reverse order (SIGTERM, then SIGKILL after ``STOP_GRACE_S``).

Everything lives under ``root``: configuration, state, logs, database; only the two Unix sockets go
to a private directory under /tmp (munged insists that every directory above its socket be
world-searchable, which pytest's 0700 temporary directories are not), removed on exit.

Client commands find this cluster through ``cluster.env``: ``SLURM_CONF`` points at ``root/slurm.conf``,
and ``PATH`` starts with ``root/bin``, which holds an ``srun`` that sets ``SLURM_CONF`` again. That
one is needed because the Snakemake job-step executor strips every ``SLURM_*`` variable (except a
few job ids) before its ``srun``, and a real cluster's ``srun`` finds /etc/slurm/slurm.conf, which
this one leaves alone.

Needs root (slurmd starts jobs as their user) and the Debian packages that ``.ci/slurm-setup.sh``
installs (Slurm 22.05 on Debian 12, built with multiple-slurmd support).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CLUSTER = "comedianci"
ACCOUNT = "comedian-ci"
PARTITION = "ci"
NODES = ("ci-node1", "ci-node2")
STOP_GRACE_S = 20.0
COMMANDS = ("munged", "munge", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld",
            "slurmd", "sbatch", "srun", "sacct", "sacctmgr", "scontrol", "sinfo", "squeue", "scancel")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_commands() -> list[str]:
    """The commands this cluster needs that are not installed (empty when it can start)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in COMMANDS if shutil.which(name, path=path) is None]


class SlurmError(RuntimeError):
    """The cluster could not start: the message names the daemon and ends with its log."""


class SlurmCluster:
    """A two-node Slurm with accounting, started in ``root`` (see the module docstring).

    Attributes (valid after entry): ``root``, ``conf`` (slurm.conf), ``env`` (environment for client
    commands and Snakemake), ``logs`` (daemon name -> log file), ``pids`` (daemon name -> PID of each
    daemon started, in start order; ``slurmd:<node>`` for each node's slurmd).
    """

    def __init__(self, root: Path, cpus: int = 2, memory_mb: int = 4000, start_timeout_s: float = 60.0):
        self.root = Path(root).resolve()
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.start_timeout_s = start_timeout_s
        self.conf = self.root / "slurm.conf"
        self.logs: dict[str, Path] = {}
        self.env: dict[str, str] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._run_dir: Path | None = None

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    # ---- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        missing = missing_commands()
        if missing:
            raise SlurmError(f"not installed: {', '.join(missing)} (run .ci/slurm-setup.sh)")
        if os.geteuid() != 0:
            raise SlurmError("a single-node Slurm needs root (slurmd starts jobs as their user)")
        for sub in ("bin", "state/slurmctld", *(f"state/slurmd/{node}" for node in NODES), "logs", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._run_dir = Path(tempfile.mkdtemp(prefix="comedian-slurm-"))
        self._run_dir.chmod(0o755)
        ports = {name: free_port() for name in ("mariadb", "slurmdbd", "slurmctld", *NODES)}
        self._write_files(ports)
        self._start_munged()
        self._start_mariadb(ports["mariadb"])
        self._start("slurmdbd", ["slurmdbd", "-D"])
        self._wait("slurmdbd", lambda: self._ok(["sacctmgr", "-n", "list", "cluster"]))
        user = getpass.getuser()
        self.run(["sacctmgr", "-i", "add", "cluster", CLUSTER])
        self.run(["sacctmgr", "-i", "add", "account", ACCOUNT, f"Cluster={CLUSTER}", "Description=ci", "Organization=ci"])
        self.run(["sacctmgr", "-i", "add", "user", user, f"Account={ACCOUNT}", f"Cluster={CLUSTER}"])
        self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: "is UP" in self._out(["scontrol", "ping"]))
        for node in NODES:
            self._start(f"slurmd:{node}", ["slurmd", "-D", "-f", str(self.conf), "-N", node])
        for node in NODES:
            self._wait(f"slurmd:{node}", lambda: self._out(["sinfo", "-h", "-n", node, "-o", "%T"]).strip() == "idle")

    def stop(self) -> None:
        """Cancel the cluster's jobs, then stop the daemons this object started, by PID. Idempotent."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self._ok(["scancel", "--user", getpass.getuser()])
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline and self._out(["squeue", "-h", "-o", "%i"]).strip():
                time.sleep(0.5)
        for name in reversed(list(self._procs)):
            proc = self._procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def running(self) -> dict[str, bool]:
        """Daemon name -> whether the process this object started is still alive."""
        return {name: proc.poll() is None for name, proc in self._procs.items()}

    # ---- client commands -------------------------------------------------------------------------

    def run(self, cmd: list[str], timeout: float = 60.0) -> str:
        """Run a client command against this cluster; its stdout (raises on failure)."""
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def sacct(self, fields: list[str], name: str | None = None, job: str | None = None,
              steps: bool = False) -> list[dict[str, str]]:
        """One row per job of this cluster (and per job step with ``steps``): field -> value, as sacct
        prints them. ``name`` keeps the jobs of that job name (the executor's run id), ``job`` one job."""
        cmd = ["sacct", "-P", "-n", "-a", "-S", "2000-01-01", "-o", ",".join(fields)] + ([] if steps else ["-X"])
        if name is not None:
            cmd += ["--name", name]
        if job is not None:
            cmd += ["-j", job]
        rows = [line.split("|") for line in self.run(cmd).splitlines() if line]
        return [dict(zip(fields, row)) for row in rows]

    def squeue(self, states: str = "all") -> list[str]:
        """The cluster's queued and running jobs in ``states`` (squeue -t), one line each: job id,
        state, reason (why a pending job waits)."""
        return [line for line in self.run(["squeue", "-h", "-t", states, "-o", "%i %T %r"]).splitlines() if line]

    # ---- internals -------------------------------------------------------------------------------

    def _write_files(self, ports: dict[str, int]) -> None:
        root, run = self.root, self._run_dir
        host = socket.gethostname().split(".")[0]
        munge_socket = run / "munge.socket"
        nodes = "\n".join(f"NodeName={node} NodeAddr=127.0.0.1 NodeHostname={host} Port={ports[node]} CPUs={self.cpus} "
                          f"RealMemory={self.memory_mb} State=UNKNOWN" for node in NODES)
        self.mysql_socket = run / "mysqld.sock"
        self.munge_socket = munge_socket
        self.mysql_port = ports["mariadb"]
        self.conf.write_text(
            f"""\
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports["slurmctld"]}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state/slurmctld
SlurmdSpoolDir={root}/state/slurmd/%n
SlurmctldPidFile={root}/state/slurmctld.pid
SlurmdPidFile={root}/state/slurmd-%n.pid
SlurmctldLogFile={root}/logs/slurmctld.log
SlurmdLogFile={root}/logs/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["slurmdbd"]}
# The MUNGE socket that talks to slurmdbd (without it: the system's /run/munge socket).
AccountingStoragePass={munge_socket}
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
MinJobAge=300
{nodes}
PartitionName={PARTITION} Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""
        )
        dbd_conf = root / "slurmdbd.conf"  # slurmdbd reads it beside $SLURM_CONF; must be 0600
        dbd_conf.write_text(
            f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort={ports["slurmdbd"]}
SlurmUser=root
PidFile={root}/state/slurmdbd.pid
LogFile={root}/logs/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mariadb"]}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
"""
        )
        dbd_conf.chmod(0o600)
        srun = shutil.which("srun")
        wrapper = root / "bin" / "srun"
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}"\nexport SLURM_CONF\nexec "{srun}" "$@"\n')
        wrapper.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", ""), "/usr/sbin", "/sbin"])
        self.env = env

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = self.root / "logs" / f"{_stem(name)}.out"
        self.logs[name] = log
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.root)
        self._procs[name] = proc
        return proc

    def _start_munged(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (self.root / "munge").chmod(0o700)
        self._start("munged", ["munged", "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--pid-file={self.root}/munge/munged.pid", f"--log-file={self.root}/logs/munged.log",
                               f"--seed-file={self.root}/munge/munged.seed"])
        self._wait("munged", lambda: self._ok(["munge", "-n", "-S", str(self.munge_socket)]))

    def _start_mariadb(self, port: int) -> None:
        datadir = self.root / "mariadb"
        log = self.root / "logs" / "mariadb-install.log"
        with open(log, "wb") as out:
            code = subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={datadir}",
                                   "--auth-root-authentication-method=socket", "--skip-test-db"],
                                  stdout=out, stderr=subprocess.STDOUT, env=self.env).returncode
        if code != 0:
            raise SlurmError(f"mariadb-install-db failed ({code}):\n{_tail(log)}")
        self._start("mariadbd", ["mariadbd", "--no-defaults", "--user=root", f"--datadir={datadir}",
                                 f"--socket={self.mysql_socket}", f"--port={port}", "--bind-address=127.0.0.1",
                                 "--skip-name-resolve", f"--pid-file={self.root}/state/mariadbd.pid",
                                 f"--log-error={self.root}/logs/mariadbd.log", "--innodb-buffer-pool-size=64M",
                                 "--innodb-lock-wait-timeout=900"])
        sql = ["mariadb", "--no-defaults", "-S", str(self.mysql_socket), "-u", "root"]
        self._wait("mariadbd", lambda: self._ok(sql + ["-e", "SELECT 1"]))
        self.run(sql + ["-e", "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
                              "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"])

    def _ok(self, cmd: list[str]) -> bool:
        try:
            return subprocess.run(cmd, env=self.env, capture_output=True, timeout=20).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _out(self, cmd: list[str]) -> str:
        try:
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return ""
        return proc.stdout if proc.returncode == 0 else ""

    def _wait(self, name: str, ready, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        proc = self._procs[name]
        while not ready():
            if proc.poll() is not None:
                raise SlurmError(f"{name} exited with {proc.returncode}:\n{self._log_tails(name)}")
            if time.monotonic() > deadline:
                raise SlurmError(f"{name} not ready after {self.start_timeout_s:.0f} s:\n{self._log_tails(name)}")
            time.sleep(poll_s)

    def _log_tails(self, name: str) -> str:
        files = [self.logs.get(name), self.root / "logs" / f"{_stem(name)}.log"]
        return "\n".join(f"--- {f}\n{_tail(f)}" for f in dict.fromkeys(files) if f is not None and f.exists())


def _stem(name: str) -> str:
    """A daemon's log file stem: ``slurmd:<node>`` -> ``slurmd-<node>`` (as SlurmdLogFile's %n)."""
    return name.replace(":", "-")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
