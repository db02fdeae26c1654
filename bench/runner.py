"""The benchmark run behind `bench/run`: starts ferry and the peers on loopback, runs every scenario of
`ferry bench` against each of them in turn (alternating, several repetitions), and writes docs/benchmarks.md with
medians, ratios and targets, plus docs/benchmarks-sessions.svg (memory per session and login rate versus N).

Called by bench/run, which fetches the peers and builds ferry first. Everything it starts runs in its own process
group and is stopped at the end; every `ferry bench` call has a time limit.
"""
import argparse
import datetime
import json
import mmap
import multiprocessing
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
WORK = BENCH / ".work"
DEBROOT = WORK / "root"
RUN = WORK / "run"
DATA = WORK / "data"
LIBS = f"{DEBROOT}/usr/lib/x86_64-linux-gnu:{DEBROOT}/lib/x86_64-linux-gnu"

SYSTEM_USER = "ferrybench"
PASSWORD = "bench-Pw-4711"
CIPHER = "aes128-gcm@openssh.com"
FALLBACK_CIPHER = "aes256-gcm@openssh.com"
# A measurement during which the hypervisor took this share of the CPUs' time or more is taken again (see
# Runner.keep_calmest): at most EXTRA_ATTEMPTS more times, and RETRY_BUDGET repetitions in each section of the run
# (a budget for the whole run was spent in its first sections on 2026-12-03, leaving none for the later ones; with
# 8 per section, a run in which the hypervisor took 12.6% of a median measurement repeated 54 and took 24 minutes). Not
# one that took RETRY_MAX_WALL seconds or more: its stolen time is an average over long enough, and a repetition
# (a forking server's 10,000 logins take a minute) would stretch the run.
STEAL_LIMIT = 0.10
EXTRA_ATTEMPTS = 2
RETRY_BUDGET = 4
RETRY_MAX_WALL = 30

# What each mode runs. Forking servers (vsftpd, pure-ftpd, ProFTPD, sshd) stop at 10,000 sessions: at about
# 0.4-0.8 MiB and one or two processes per session, 19,000 of them would need most of the machine's memory and
# more processes than pid_max (32,768) allows. They log in at 100-200 sessions/s here, so they are measured once
# per N (their memory per session is that of a process, the same at every N); ferry and pyftpdlib are repeated at
# every N (a few hundred KiB of allocator state make single runs at 1,000 sessions vary by +-0.3 KiB per session),
# and the median is reported; the targets are set at sessions_repeat_n. Small files are repeated five times: one
# measurement lasts a fraction of a second, and the machine's speed drifts (with three, ferry's RETR measured
# 8,226-10,534 files/s in a run and 8,876-13,570 by hand right after, pure-ftpd's 8,062-11,149 and 7,354-11,488);
# the run limits TIME_WAIT sockets so that their data connections do not use up the ephemeral ports (see
# TIME_WAIT_LIMIT).
FULL = dict(
    reps=3,
    transfer_size="1GiB",
    many_streams=100,
    many_size="16MiB",
    small_files=2000,
    small_clients=10,
    small_reps=5,
    list_entries=100_000,
    sessions_n=[1000, 5000, 10000, 19000],
    sessions_n_forking=[1000, 10000],
    sessions_repeat_n=10000,
    sftp_size="1GiB",
    sftp_streams=4,
    sftp_stream_size="256MiB",
    sftp_sessions=500,
    touch_memory=1 << 40,
)
QUICK = dict(
    reps=1,
    transfer_size="128MiB",
    many_streams=20,
    many_size="4MiB",
    small_files=300,
    small_clients=10,
    small_reps=1,
    list_entries=10_000,
    sessions_n=[200, 1000],
    sessions_n_forking=[200, 1000],
    sessions_repeat_n=None,
    sftp_size="128MiB",
    sftp_streams=4,
    sftp_stream_size="32MiB",
    sftp_sessions=50,
    # Its transfers are small: enough for them, so that the check stays short.
    touch_memory=4 << 30,
)


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def wait_listening(port, timeout):
    """Waits until something listens on the IPv4 TCP `port`, without connecting to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                return True
        time.sleep(0.05)
    return False


def fill(template: Path, out: Path, **values):
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    out.write_text(text)
    return out


class Server:
    """One server under test, started in its own process group."""

    forking = False

    def __init__(self, name, protocol, port, url):
        self.name, self.protocol, self.port, self.url = name, protocol, port, url
        self.proc = None
        self.log_path = RUN / f"{name}.log"

    def command(self):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def start(self):
        if wait_port(self.port, timeout=0.2):
            raise RuntimeError(f"port {self.port} for {self.name} is already in use: stop what listens there")
        self.proc = subprocess.Popen(
            self.command(), env=self.env(), stdin=subprocess.DEVNULL, stdout=open(self.log_path, "a"),
            stderr=subprocess.STDOUT, preexec_fn=raise_nofile, start_new_session=True, cwd=str(WORK),
        )
        if not wait_port(self.port) or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} did not start; see {self.log_path}:\n{self.log_path.read_text()[-2000:]}")

    def stop(self):
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Session processes of forking servers may outlive the listener for a moment.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    @property
    def pid(self):
        return self.proc.pid


class Ferry(Server):
    def __init__(self, binary, ftp_port, sftp_port):
        super().__init__("ferry", "ftp", ftp_port, f"ftp://bench:{PASSWORD}@127.0.0.1:{ftp_port}/")
        self.binary, self.sftp_port = binary, sftp_port
        self.data = DATA / "ferry"
        self.home = self.data / "files" / "bench"

    def prepare(self):
        if not self.home.exists():
            subprocess.run([self.binary, "user", "add", "bench", "--password-stdin", "--data-dir", str(self.data)],
                           input=PASSWORD + "\n", text=True, check=True, capture_output=True)

    def command(self):
        return [self.binary, "serve", "--data-dir", str(self.data), "--ftp", f"127.0.0.1:{self.port}",
                "--sftp", f"127.0.0.1:{self.sftp_port}", "--max-connections", "30000", "--max-connections-per-ip", "0",
                "--idle-timeout", "900",
                "--login-timeout", "900"]

    def env(self):
        return dict(os.environ, FERRY_LOG="warn")

    def start(self):
        super().start()
        if not wait_port(self.sftp_port):
            raise RuntimeError("ferry's SFTP listener did not start")


class Vsftpd(Server):
    forking = True

    def __init__(self, port):
        super().__init__("vsftpd", "ftp", port, f"ftp://{SYSTEM_USER}:{PASSWORD}@127.0.0.1:{port}/")
        self.home = DATA / "system"
        self.conf = fill(PEERS / "vsftpd.conf", RUN / "vsftpd.conf", PORT=port, WORK=WORK)

    def command(self):
        return [str(DEBROOT / "usr/sbin/vsftpd"), str(self.conf)]

    def env(self):
        return dict(os.environ, LD_LIBRARY_PATH=LIBS)


class PureFtpd(Server):
    forking = True

    def __init__(self, port):
        super().__init__("pure-ftpd", "ftp", port, f"ftp://{SYSTEM_USER}:{PASSWORD}@127.0.0.1:{port}/")
        self.home = DATA / "system"
        text = fill(PEERS / "pure-ftpd.args", RUN / "pure-ftpd.args", PORT=port, WORK=WORK).read_text()
        self.args = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]

    def command(self):
        return [str(DEBROOT / "usr/sbin/pure-ftpd"), *self.args]

    def env(self):
        return dict(os.environ, LD_LIBRARY_PATH=LIBS)


class Proftpd(Server):
    forking = True

    def __init__(self, port):
        super().__init__("proftpd", "ftp", port, f"ftp://{SYSTEM_USER}:{PASSWORD}@127.0.0.1:{port}/")
        self.home = DATA / "system"
        self.conf = fill(PEERS / "proftpd.conf", RUN / "proftpd.conf", PORT=port, WORK=WORK)

    def command(self):
        return [str(DEBROOT / "usr/sbin/proftpd"), "--nodaemon", "--config", str(self.conf)]

    def env(self):
        return dict(os.environ, LD_LIBRARY_PATH=LIBS)


class Pyftpdlib(Server):
    def __init__(self, port):
        super().__init__("pyftpdlib", "ftp", port, f"ftp://bench:{PASSWORD}@127.0.0.1:{port}/")
        self.home = DATA / "pyftpdlib"

    def command(self):
        return [sys.executable, str(PEERS / "pyftpdlib_server.py"), str(self.port), str(self.home), "bench", PASSWORD]


class NullFtp(Server):
    """`ferry bench null-ftp`: answers USER and PASS and does nothing else. The login rate against it is the floor
    set by the kernel's TCP work, the runtime's and the load generator's, which no server's can beat here."""

    def __init__(self, binary, port):
        super().__init__("null-ftp", "ftp", port, f"ftp://bench:{PASSWORD}@127.0.0.1:{port}/")
        self.binary = binary

    def command(self):
        return [self.binary, "bench", "null-ftp", "--listen", f"127.0.0.1:{self.port}"]


class Sshd(Server):
    forking = True

    def __init__(self, port):
        super().__init__("openssh", "sftp", port, f"sftp://{SYSTEM_USER}:{PASSWORD}@127.0.0.1:{port}/")
        self.home = DATA / "system"
        self.conf = fill(PEERS / "sshd_config", RUN / "sshd_config", PORT=port, WORK=WORK, ROOT=DEBROOT)

    def command(self):
        return [str(DEBROOT / "usr/sbin/sshd"), "-D", "-e", "-f", str(self.conf)]

    def env(self):
        return dict(os.environ, LD_LIBRARY_PATH=LIBS)


def sh(*cmd, retries=1, **kw):
    """Runs a command; `retries` > 1 retries a failure (useradd and chpasswd fail while another process, such as a
    test worker creating its own user, holds the passwd or shadow lock)."""
    for attempt in range(retries):
        try:
            return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
        except subprocess.CalledProcessError:
            if attempt + 1 == retries:
                raise
            time.sleep(0.5)


def prepare_system():
    """The local user the FTP peers and sshd log in as, sshd's privilege separation, certificates, directories."""
    RUN.mkdir(parents=True, exist_ok=True)
    (RUN / "vsftpd-empty").mkdir(exist_ok=True)
    os.chmod(RUN / "vsftpd-empty", 0o755)
    system_home = DATA / "system"
    system_home.mkdir(parents=True, exist_ok=True)
    (DATA / "pyftpdlib").mkdir(parents=True, exist_ok=True)
    try:
        pwd.getpwnam(SYSTEM_USER)
        sh("usermod", "-d", str(system_home), "-s", "/bin/sh", SYSTEM_USER, retries=10)
    except KeyError:
        sh("useradd", "-M", "-d", str(system_home), "-s", "/bin/sh", SYSTEM_USER, retries=10)
    sh("chpasswd", "-c", "SHA512", input=f"{SYSTEM_USER}:{PASSWORD}\n", retries=10)
    entry = pwd.getpwnam(SYSTEM_USER)
    for path in [system_home, *system_home.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        pwd.getpwnam("sshd")
    except KeyError:
        sh("useradd", "--system", "-M", "-d", "/run/sshd", "-s", "/usr/sbin/nologin", "sshd", retries=10)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    if not (RUN / "tls.pem").exists():
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365", "-subj", "/CN=127.0.0.1",
           "-keyout", str(RUN / "tls.key"), "-out", str(RUN / "tls.pem"))
        (RUN / "tls-combined.pem").write_text((RUN / "tls.key").read_text() + (RUN / "tls.pem").read_text())
        for f in ("tls.key", "tls-combined.pem"):
            os.chmod(RUN / f, 0o600)
    if not (RUN / "ssh_host_ed25519_key").exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(RUN / "ssh_host_ed25519_key"))


class KernelSetting:
    """A kernel setting the run changes for its duration and restores at its end; absent or unwritable, it is left
    alone (`before` stays None)."""

    def __init__(self, path, value):
        self.path, self.value, self.before = Path(path), value, None

    def apply(self):
        try:
            before = self.path.read_text().strip()
            self.path.write_text(self.value)
        except OSError:
            return False
        self.before = before
        return True

    def restore(self):
        if self.before is not None:
            self.path.write_text(self.before)


# The guest's free page reporting (virtio-balloon): memory the kernel frees is handed back to the hypervisor, and the
# first write into such a page afterwards faults in the host. On the machine of 2026-12-04 (reporting at once, from
# 2 MiB blocks) a file write of 1 GiB into memory freed a moment before (the previous file deleted, as every upload
# of `ferry bench transfer` does) ran at 599-1,040 MiB/s with 1.0-1.7 s of CPU, the same write into memory touched
# since at 3,200-4,500 MiB/s with 0.23-0.32 s: whichever server's upload drew the handed-back pages measured the
# host's page faults, not its own work. The run turns reporting off (blocks above the largest order never qualify)
# and restores the setting at its end, and first writes once into all the free memory, so that the host backs the
# pages handed back before (without that, ferry's and pure-ftpd's first 1 GiB uploads of a run still measured 363
# and 379 MiB/s against 1,265-1,423 for the servers after them). Where the kernel has no such parameter, nothing
# changes.
PAGE_REPORTING = KernelSetting("/sys/module/page_reporting/parameters/page_reporting_order", "11")
# TIME_WAIT: every small-file transfer is a data connection of its own, and the end that closes it first keeps its
# local port in TIME_WAIT for a minute. Five repetitions of 2,000 STORs and RETRs against five servers in a row left
# 98,523 sockets in TIME_WAIT, and pyftpdlib's bind of a passive port then failed with EADDRINUSE (the ephemeral
# ports, 32768-60999, were all taken; 2026-12-04; vsftpd's "500 OOPS: priv_sock_get_int" and pyftpdlib's closed
# connections in longer series on 2026-12-02 were probably the same). TIME_WAIT guards against late or lost segments
# of a closed connection, which loopback does not have, so the run keeps at most this many; the kernel closes the
# others at once.
TIME_WAIT_LIMIT = KernelSetting("/proc/sys/net/ipv4/tcp_max_tw_buckets", "16384")


def touch_free_memory(limit, margin=1 << 30):
    """Writes once into every page of the free memory but `margin` bytes, `limit` bytes at most, then frees it again
    (freed pages are the first the kernel hands out again). One process per CPU (the host's page faults take most of
    the time: about 75 s for 18.5 GiB from one process); each holds its share until all are done, so that no two
    write into the same pages. Returns the bytes written."""
    free = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemFree:"))
    workers = os.cpu_count() or 1
    share = min(free - margin, limit) // workers // mmap.PAGESIZE * mmap.PAGESIZE
    if share <= 0:
        return 0
    ctx = multiprocessing.get_context("fork")
    all_done = ctx.Barrier(workers + 1)
    procs = [ctx.Process(target=touch_and_hold, args=(share, all_done)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    try:
        all_done.wait(timeout=600)
    except threading.BrokenBarrierError:
        pass
    for proc in procs:
        proc.join()
    return share * workers if all(proc.exitcode == 0 for proc in procs) else 0


def touch_and_hold(size, all_done):
    """touch_free_memory's worker: maps `size` bytes, writes into each page, and keeps them until all workers have
    (a worker that fails breaks the barrier, so that the others do not wait for it)."""
    try:
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
    except BaseException:
        all_done.abort()
        raise
    try:
        all_done.wait(timeout=600)
    except threading.BrokenBarrierError:
        pass
    block.close()


class Runner:
    def __init__(self, ferry_bin, mode, quick):
        self.ferry_bin, self.mode, self.quick = ferry_bin, mode, quick
        self.results = []
        self.retries_left = RETRY_BUDGET

    def keep_calmest(self, measure, before=None):
        """Runs one measurement and records it. When the hypervisor stole at least STEAL_LIMIT of the CPUs' time
        during it, the measurement is taken again (EXTRA_ATTEMPTS times at most, RETRY_BUDGET times in a section of
        the run; not after an attempt of RETRY_MAX_WALL seconds or more) and the attempt with the least stolen time is
        the one recorded. The choice is made by stolen time alone, never by the figure, and the same rule applies
        to every server; the stolen times of the discarded attempts are kept in the record. `before` (a restart,
        say) runs before each attempt."""
        attempts = []
        while True:
            if before:
                before()
            attempts.append(measure())
            steal, wall = attempts[-1]["steal"] or 0, attempts[-1]["wall"]
            if (steal < STEAL_LIMIT or wall >= RETRY_MAX_WALL or len(attempts) > EXTRA_ATTEMPTS
                    or not self.retries_left):
                break
            self.retries_left -= 1
            log(f"    {steal:.0%} of the CPUs' time was stolen: measuring again")
        kept = min(attempts, key=lambda r: r["steal"] or 0)
        kept["discarded_steal"] = [r["steal"] for r in attempts if r is not kept]
        self.results.append(kept)
        return kept

    def section(self, title):
        """Starts a section of the run: logs its title and gives it its own budget of repetitions."""
        log(f"== {title}")
        self.retries_left = RETRY_BUDGET

    def bench(self, server, scenario, *args, cipher=None, before=None):
        """Runs one `ferry bench` scenario and records its JSON (or its error)."""
        return self.keep_calmest(lambda: self.bench_once(server, scenario, *args, cipher=cipher), before)

    def bench_once(self, server, scenario, *args, cipher=None, timeout=900):
        """One attempt of bench(): logged, not recorded. A server's memory is measured by its current pid, which a
        restart before the attempt changes."""
        url = server.url if server else None
        pid = ["--pid", str(server.pid)] if server else []
        cmd = [self.ferry_bin, "bench", scenario, *([url] if url else []), *args, *pid, "--json"]
        if cipher:
            cmd += ["--cipher", cipher]
        if scenario in ("transfer", "small"):
            # Write back what earlier scenarios left dirty in the page cache, so that the kernel's flusher threads
            # do not take CPU in the middle of this measurement (one file system for every server; here a sync of
            # 1 GiB takes about 0.4 s, and the 1 GiB uploads of every server varied 2x within a run without it).
            os.sync()
        started, ticks = time.monotonic(), cpu_ticks()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=raise_nofile)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError((proc.stderr or proc.stdout).strip()[-500:])
            report = json.loads(lines[-1])
            error = None
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            report, error = None, str(e)
        record = dict(server=server.name if server else "loopback", protocol=url.split(":")[0] if url else "tcp",
                      scenario=scenario, args=without_pids(args), cipher=cipher, report=report, error=error,
                      wall=time.monotonic() - started, steal=stolen_since(ticks))
        summary = error if error else summarize(scenario, report)
        if (record["steal"] or 0) >= 0.05:
            summary += f" ({record['steal']:.0%} of the CPUs' time stolen by the hypervisor)"
        log(f"  {record['server']:<10} {scenario:<9} {' '.join(args):<40} {summary}")
        return record

    def iperf3(self, size):
        return self.keep_calmest(lambda: self.iperf3_once(size))

    def iperf3_once(self, size):
        """The loopback copy between two processes: iperf3 sends `size` bytes in one stream, 256 KiB per write (the
        buffer size of `ferry bench`), to a one-off iperf3 server that reads and discards them."""
        port = 21230
        cmd = [str(DEBROOT / "usr/bin/iperf3"), "-c", "127.0.0.1", "-p", str(port), "-n", iperf_size(size),
               "-l", "256K", "-J"]
        env = dict(os.environ, LD_LIBRARY_PATH=LIBS)
        server = subprocess.Popen([str(DEBROOT / "usr/bin/iperf3"), "-s", "-B", "127.0.0.1", "-p", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        started, ticks = time.monotonic(), cpu_ticks()
        try:
            # Not wait_port: iperf3 would take a probing connection for a test client.
            if not wait_listening(port, timeout=10):
                raise RuntimeError("the iperf3 server did not start")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            end = json.loads(proc.stdout)["end"]
            cpu = end.get("cpu_utilization_percent", {})
            report = dict(streams=1, size=parse_size(size),
                          mib_per_sec=end["sum_received"]["bits_per_second"] / 8 / 2**20,
                          sender_cpu_percent=cpu.get("host_total"), receiver_cpu_percent=cpu.get("remote_total"))
            error = None
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
            report, error = None, str(e)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        record = dict(server="loopback", protocol="tcp", scenario="iperf3", args=["-n", iperf_size(size)],
                      cipher=None, report=report, error=error, wall=time.monotonic() - started,
                      steal=stolen_since(ticks))
        log(f"  loopback   iperf3    -n {iperf_size(size):<37} "
            f"{error if error else format(report['mib_per_sec'], '.0f') + ' MiB/s'}")
        return record

    def local_write(self, size, replace):
        return self.keep_calmest(lambda: self.local_write_once(size, replace))

    def local_write_once(self, size, replace, settle=False):
        """The other limit of an upload: one process writes the same bytes from memory into a file on the servers'
        file system (256 KiB writes, then close). As a new file (the old one unlinked first, untimed), which is
        what each upload of `ferry bench transfer` creates; and, for comparison, replacing the file written before
        (open with O_TRUNC): freeing the old file's cached pages and blocks, and ext4 writing back a file truncated
        to zero when it is closed, are what any server's STOR over a large existing file costs on top."""
        path = DATA / ("local-replace.bin" if replace else "local-write.bin")
        n = parse_size(size)
        chunk = memoryview(bytes(range(256)) * 1024)

        def write(fd):
            done = 0
            while done < n:
                done += os.write(fd, chunk[:min(len(chunk), n - done)])

        started, ticks = time.monotonic(), cpu_ticks()
        try:
            if replace and (not path.exists() or path.stat().st_size != n):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                write(fd)
                os.close(fd)
            elif not replace:
                path.unlink(missing_ok=True)
            os.sync()
            t0 = time.perf_counter()
            fd = os.open(path, os.O_WRONLY | (os.O_TRUNC if replace else os.O_CREAT | os.O_EXCL), 0o644)
            t1 = time.perf_counter()
            write(fd)
            t2 = time.perf_counter()
            os.close(fd)
            t3 = time.perf_counter()
            report = dict(size=n, mib_per_sec=n / (t3 - t0) / 2**20, open_seconds=t1 - t0, write_seconds=t2 - t1,
                          close_seconds=t3 - t2)
            error = None
        except OSError as e:
            report, error = None, str(e)
        finally:
            if not replace:
                path.unlink(missing_ok=True)
        scenario = "replace" if replace else "write"
        record = dict(server="local", protocol="file", scenario=scenario, args=["--size", size], cipher=None,
                      report=report, error=error, wall=time.monotonic() - started, steal=stolen_since(ticks))
        log(f"  local      {'settle' if settle else scenario:<9} {size:<40} "
            f"{error if error else format(report['mib_per_sec'], '.0f') + ' MiB/s'}")
        return record

    def settle(self, size):
        """Waits, a minute at most, until writing a new file runs at a steady speed (two local writes in a row within
        15% of each other; they are logged, not recorded). Twice on 2026-12-02, in runs started a minute after a
        build, the local write and the uploads of whichever servers came first ran at a third of their speed for
        some 20 s (local write 700, 1,598, 2,191 MiB/s in one run; cause unknown); this keeps that off the
        figures."""
        deadline = time.monotonic() + 60
        last = None
        while time.monotonic() < deadline:
            report = self.local_write_once(size, replace=False, settle=True)["report"]
            if report is None:
                return
            speed = report["mib_per_sec"]
            if last is not None and abs(speed - last) <= 0.15 * max(speed, last):
                return
            last = speed

    def ftp_servers(self):
        return [s for s in self.servers if s.protocol == "ftp"]

    def rotation(self, servers, rep):
        """The servers in an order that starts one further on each repetition."""
        k = rep % len(servers)
        return servers[k:] + servers[:k]

    def run(self, ferry):
        m = self.mode
        ftp = self.ftp_servers()
        self.section("raw loopback TCP and the cipher alone (the physical limits)")
        for rep in range(m["reps"]):
            self.bench(None, "raw-tcp", "--size", m["transfer_size"], "--streams", "1")
            self.bench(None, "raw-tcp", "--size", m["many_size"], "--streams", str(m["many_streams"]))
            self.bench(None, "raw-tcp", "--size", m["sftp_stream_size"], "--streams", str(m["sftp_streams"]))
            self.iperf3(m["transfer_size"])
        self.cipher_speed = openssl_speed()

        self.section("transfer: one stream, plain FTP (and the local write of the same bytes)")
        self.settle(m["transfer_size"])
        for rep in range(m["reps"]):
            self.local_write(m["transfer_size"], replace=False)
            self.local_write(m["transfer_size"], replace=True)
            for s in self.rotation(ftp, rep):
                self.bench(s, "transfer", "--size", m["transfer_size"], "--streams", "1")
        self.section("transfer: one stream, FTPS (explicit TLS, PROT P)")
        ftps = [s for s in ftp if s.name in ("ferry", "vsftpd", "pure-ftpd")]
        for rep in range(m["reps"]):
            for s in self.rotation(ftps, rep):
                self.bench(TlsView(s), "transfer", "--size", m["transfer_size"], "--streams", "1")
        self.section(f"transfer: {m['many_streams']} streams at once")
        for rep in range(m["reps"]):
            for s in self.rotation(ftp, rep):
                self.bench(s, "transfer", "--size", m["many_size"], "--streams", str(m["many_streams"]))
        self.section("small files")
        for rep in range(m["small_reps"]):
            for s in self.rotation(ftp, rep):
                self.bench(s, "small", "--files", str(m["small_files"]), "--size", "4KiB",
                           "--clients", str(m["small_clients"]))
        self.section(f"list {m['list_entries']} entries")
        for rep in range(m["reps"]):
            for s in self.rotation(ftp, rep):
                self.bench(s, "list", "--entries", str(m["list_entries"]), "--local-dir", str(s.home),
                           before=s.restart)
        self.run_sftp(ferry)
        self.run_sessions()

    def run_sftp(self, ferry):
        m = self.mode
        self.section("SFTP")
        sftp = [ferry.sftp_view(), self.sshd]
        cipher = CIPHER
        probe = self.bench_once(sftp[0], "transfer", "--size", "1MiB", "--streams", "1", cipher=CIPHER)
        if probe["error"] and "No common Cipher" in probe["error"]:
            log(f"  ferry does not offer {CIPHER}; comparing with {FALLBACK_CIPHER} instead")
            self.ferry_lacks_cipher = probe["error"]
            cipher = FALLBACK_CIPHER
        self.sftp_cipher = cipher
        for rep in range(m["reps"]):
            for s in self.rotation(sftp, rep):
                self.bench(s, "transfer", "--size", m["sftp_size"], "--streams", "1", cipher=cipher)
                self.bench(s, "transfer", "--size", m["sftp_stream_size"], "--streams", str(m["sftp_streams"]),
                           cipher=cipher)
        for s in sftp:
            self.bench(s, "sessions", "-n", str(m["sftp_sessions"]), cipher=cipher, before=s.restart)

    def run_sessions(self):
        m = self.mode
        self.section("idle sessions (each server restarted before each measurement)")
        plan = []
        for n in sorted(set(m["sessions_n"]) | set(m["sessions_n_forking"])):
            plan.append((n, 0))
            if n in m["sessions_n"]:
                plan += [(n, rep) for rep in range(1, m["reps"])]
        # The floor for logins is measured where the login target is set, as often as ferry.
        floor_n = m["sessions_repeat_n"] or max(m["sessions_n"])
        for i, (n, rep) in enumerate(plan):
            servers = self.ftp_servers() + ([self.null_ftp] if n == floor_n else [])
            for s in self.rotation(servers, i):
                if n not in (m["sessions_n_forking"] if s.forking else m["sessions_n"]):
                    continue
                if s.forking and rep > 0:
                    continue
                self.bench(s, "sessions", "-n", str(n), "--source-ips", "127.0.0.1-127.0.0.20",
                           before=lambda s=s: (s.restart(), time.sleep(0.5)))


class TlsView:
    """The same server reached over explicit FTPS."""

    def __init__(self, server):
        self.server = server
        self.name = server.name
        self.url = server.url.replace("ftp://", "ftps://", 1)

    @property
    def pid(self):
        return self.server.pid


class SftpView:
    def __init__(self, ferry):
        self.ferry = ferry
        self.name = "ferry"
        self.url = f"sftp://bench:{PASSWORD}@127.0.0.1:{ferry.sftp_port}/"

    @property
    def pid(self):
        return self.ferry.pid

    def restart(self):
        self.ferry.restart()


Ferry.sftp_view = lambda self: SftpView(self)


def without_pids(args):
    """The arguments that name a scenario's configuration (no --pid, no --local-dir)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("--pid", "--local-dir"):
            skip = True
        else:
            out.append(a)
    return out


def parse_size(text):
    """`1GiB`, `128MiB`, `4KiB` in bytes."""
    units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(text[: -len(unit)]) * factor
    return int(text)


def iperf_size(text):
    """A size in iperf3's notation (its K, M and G are powers of 1024)."""
    return text.replace("iB", "")


def summarize(scenario, r):
    if scenario == "raw-tcp":
        return f"{r['mib_per_sec']:.0f} MiB/s"
    if scenario == "transfer":
        return f"up {r['upload']['mib_per_sec']:.0f} MiB/s, down {r['download']['mib_per_sec']:.0f} MiB/s"
    if scenario == "small":
        return f"STOR {r['stor_ops_per_sec']:.0f}/s, RETR {r['retr_ops_per_sec']:.0f}/s"
    if scenario == "list":
        return f"{r['command']} {r['seconds']:.3f} s, {r['lines']} lines, +{r['memory_growth_kib']} KiB"
    if scenario == "sessions":
        per = r["per_session_kib"]
        return (f"{r['sessions_opened']}/{r['sessions_requested']} at {r['logins_per_sec']:.0f}/s, "
                f"{per:.2f} KiB/session" if per is not None else f"{r['sessions_opened']} opened")
    return ""


def openssl_speed():
    """AES-128-GCM alone on one core, 32 KiB blocks (an SFTP packet), in MiB/s."""
    try:
        out = sh("openssl", "speed", "-evp", "aes-128-gcm", "-bytes", "32768", "-seconds", "3").stdout
        line = [l for l in out.splitlines() if l.lower().startswith("aes-128-gcm")][-1]
        kbytes = float(line.split()[-1].rstrip("k"))
        return kbytes * 1000 / (1024 * 1024)
    except (subprocess.CalledProcessError, IndexError, ValueError):
        return None


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    os_name = next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release")
                    if l.startswith("PRETTY_NAME")), "?")
    return dict(
        cpu=cpu, cores=os.cpu_count(), memory_gib=round(mem / 1024 / 1024, 1), kernel=platform.release(), os=os_name,
        nofile_hard=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        port_range=Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split(),
        pid_max=Path("/proc/sys/kernel/pid_max").read_text().strip(),
        somaxconn=Path("/proc/sys/net/core/somaxconn").read_text().strip(),
    )


def cpu_ticks():
    """(stolen, total) jiffies of all CPUs from /proc/stat. Stolen time is time in which the hypervisor ran something
    else on this virtual machine's CPUs: on 2026-12-02 vmstat showed 30-46% stolen while the small-file scenario
    wrote files (the host's side of the virtual disk competes with the guest), and the figures of those minutes
    swung 2x between repetitions. Each measurement records its share."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (values[7] if len(values) == 8 else 0), sum(values)


def stolen_since(start):
    """The share of the CPUs' time stolen by the hypervisor since `start` (a `cpu_ticks()` reading)."""
    steal, total = cpu_ticks()
    elapsed = total - start[1]
    return round((steal - start[0]) / elapsed, 3) if elapsed > 0 else None


def busy_processes():
    """Processes using the most CPU right now (other engineers' builds, for instance), leaving out this runner and
    bench/run, whose share (CPU time over their short lifetime) is high at the start although they wait."""
    out = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True,
                         text=True).stdout.splitlines()
    own = {os.getpid(), os.getppid()}
    rows = [l.split(None, 2) for l in out if l.strip()]
    busy = [f"{pcpu} {comm}" for pid, pcpu, comm in rows if int(pid) not in own and float(pcpu) >= 5.0]
    return busy[:5]


def versions(ferry_bin):
    def deb(name):
        found = sorted((WORK / "debs").glob(f"{name}_*.deb"))
        return found[0].name.split("_")[1].replace("%3a", ":") if found else "?"

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    ferry = subprocess.run([ferry_bin, "--version"], capture_output=True, text=True).stdout.strip()
    import pyftpdlib
    return {
        "ferry": f"{ferry} (commit {commit}{', with uncommitted changes' if dirty else ''})",
        "vsftpd": deb("vsftpd"),
        "pure-ftpd": deb("pure-ftpd"),
        "proftpd": deb("proftpd-core"),
        "pyftpdlib": f"{pyftpdlib.__ver__} on Python {platform.python_version()}",
        "openssh": deb("openssh-server"),
        "openssl": sh("openssl", "version").stdout.strip(),
        "iperf3": deb("iperf3"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ferry", required=True)
    parser.add_argument("--quick", action="store_true", help="a check that everything works, in a minute or two")
    args = parser.parse_args()
    raise_nofile()
    # A stopped run (SIGTERM) still stops its servers and restores the machine's settings (the `finally` below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    quick = args.quick
    mode = QUICK if quick else FULL
    started = time.time()
    prepare_system()
    machine_before = dict(load=os.getloadavg(), busy=busy_processes())
    # The binary was built from the tree as it is now: record its commit before others commit more.
    run_versions = versions(args.ferry)

    # The server runs from a copy of its own: were it the load generator's file, the two processes would share its
    # code pages, and PSS charges a shared page half to each. The load generator touches more of them as a run goes
    # on, which lowered ferry's "after" figure by ~0.3 MiB and made 1,000 sessions look 0.3 KiB per session cheaper
    # than 10,000 (measured: 1.53 and 1.54 KiB at 1,000 from the shared file, 1.83 and 1.77 from a copy).
    server_binary = WORK / "ferry-server"
    shutil.copy2(args.ferry, server_binary)
    ferry = Ferry(str(server_binary), 21210, 21220)
    ferry.prepare()
    servers = [ferry, Vsftpd(21211), PureFtpd(21212), Proftpd(21213), Pyftpdlib(21214)]
    sshd = Sshd(21221)
    null_ftp = NullFtp(str(server_binary), 21215)
    runner = Runner(args.ferry, mode, quick)
    runner.servers, runner.sshd, runner.null_ftp = servers, sshd, null_ftp
    runner.ferry_lacks_cipher = None
    settings = [PAGE_REPORTING, TIME_WAIT_LIMIT]
    try:
        for setting in settings:
            if setting.apply():
                log(f"{setting.path}: {setting.before} -> {setting.value} for the run")
        if PAGE_REPORTING.before is not None:
            touched = touch_free_memory(mode["touch_memory"])
            log(f"{touched / 2**30:.1f} GiB of free memory written once")
        for s in servers + [sshd]:
            s.start()
            log(f"started {s.name} (pid {s.pid}) on port {s.port}")
        runner.run(ferry)
    finally:
        for s in servers + [sshd, null_ftp]:
            s.stop()
        for setting in settings:
            setting.restore()
    finished = time.time()
    info = dict(
        quick=quick, mode=mode, started=datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        minutes=round((finished - started) / 60, 1), machine=machine(), load_before=machine_before,
        load_after=dict(load=os.getloadavg(), busy=busy_processes()), versions=run_versions,
        cipher_mib_s=runner.cipher_speed, sftp_cipher=runner.sftp_cipher,
        ferry_lacks_cipher=runner.ferry_lacks_cipher, ferry_command=" ".join(ferry.command()),
        kernel_settings={str(s.path): [s.before, s.value] for s in settings if s.before is not None},
    )
    out = WORK / ("results-quick.json" if quick else "results.json")
    out.write_text(json.dumps(dict(info=info, results=runner.results), indent=1))
    log(f"raw results in {out}")
    import report
    md, svg = report.render(info, runner.results)
    if quick:
        md_path, svg_path = WORK / "benchmarks-quick.md", WORK / "benchmarks-sessions-quick.svg"
    else:
        md_path, svg_path = ROOT / "docs/benchmarks.md", ROOT / "docs/benchmarks-sessions.svg"
    md_path.write_text(md)
    svg_path.write_text(svg)
    log(f"wrote {md_path} and {svg_path} in {info['minutes']} minutes")


if __name__ == "__main__":
    main()
