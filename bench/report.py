"""Turns the results of one `bench/run` into docs/benchmarks.md (tables, ratios, targets, machine, versions, exact
peer configurations) and an SVG plot of memory per idle session and login rate versus the number of sessions."""
import math
import statistics
from collections import Counter
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent / "peers"
# The server that answers a login with no work (bench/runner.py's NullFtp): a limit, not a peer.
FLOOR = "null-ftp"
FTP_PEERS = ["vsftpd", "pure-ftpd", "proftpd", "pyftpdlib"]
COLORS = {"ferry": "#d62728", "vsftpd": "#1f77b4", "pure-ftpd": "#2ca02c", "proftpd": "#9467bd",
          "pyftpdlib": "#ff7f0e", "openssh": "#8c564b"}


def pick(results, scenario, protocol=None, args=None):
    """{server: [report, ...]} for the runs that match."""
    out = {}
    for r in results:
        if r["scenario"] != scenario or r["report"] is None:
            continue
        if protocol and r["protocol"] != protocol:
            continue
        if args is not None and r["args"] != args:
            continue
        out.setdefault(r["server"], []).append(r["report"])
    return out


def errors(results):
    return [r for r in results if r["error"]]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def spread(values, digits=0):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt(m, digits)
    return f"{fmt(m, digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def ratio(ferry, best, higher_is_better=True):
    if ferry is None or best is None or best == 0 or ferry == 0:
        return "–"
    return f"{ferry / best:.2f}×" if higher_is_better else f"{best / ferry:.2f}× better" if ferry < best else \
        f"{ferry / best:.2f}× worse"


def best_peer(values_by_server, peers, higher_is_better=True):
    candidates = [(v, s) for s, v in values_by_server.items() if s in peers and v is not None]
    if not candidates:
        return None, None
    return (max if higher_is_better else min)(candidates)


class Doc:
    def __init__(self):
        self.lines = []

    def p(self, text=""):
        self.lines.append(text)

    def table(self, header, rows):
        self.p("| " + " | ".join(header) + " |")
        self.p("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        for row in rows:
            self.p("| " + " | ".join(str(c) for c in row) + " |")
        self.p()


def render(info, results):
    mode = info["mode"]
    d = Doc()
    targets = []
    d.p("# Benchmarks")
    d.p()
    kind = "quick check (`bench/run --quick`), not the reference figures" if info["quick"] else "full run"
    d.p(f"Measured by `bench/run` ({kind}) on {info['started']}, in {info['minutes']} minutes. Reproduce with "
        "`sudo bench/run` from a checkout (see [Method](#method)); every figure below is the median of the "
        f"repetitions ({mode['reps']} per configuration, {mode.get('small_reps', mode['reps'])} for small files, "
        "servers alternating), with the range in parentheses.")
    d.p()
    m = info["machine"]
    d.p(f"**Machine**: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB memory, {m['os']}, Linux {m['kernel']}. "
        f"Open-file limit per process: {m['nofile_hard']} (hard; every server and the load generator raise their "
        f"soft limit to it). Ephemeral ports {m['port_range'][0]}–{m['port_range'][1]}, pid_max {m['pid_max']}, "
        f"somaxconn {m['somaxconn']}.")
    d.p()
    lb, la = info["load_before"], info["load_after"]
    load_note = (f"Load average {lb['load'][0]:.2f} at the start and {la['load'][0]:.2f} at the end of the run (the "
                 "end includes the thousands of session processes of the forking peers being torn down).")
    busy = sorted({b for b in lb["busy"] + la["busy"] if b.split()[-1] != "ps"})
    if busy:
        load_note += (" **The machine was shared**: other processes were busy during the run "
                      f"({'; '.join(busy)}), so absolute figures are lower and noisier than on an idle machine; "
                      "servers ran alternately, so the comparisons stay fair.")
    elif lb["load"][0] > 1.0:
        # The one-minute average decays slowly: a build of ferry just before the run raises it on its own.
        load_note += (" The load at the start is a one-minute average that includes the build of ferry and anything "
                      "else in the minute before the run; `ps` showed no process using 5% of a CPU or more at its start.")
    d.p(load_note)
    d.p()
    stolen = [r for r in results if r.get("steal") is not None]
    if stolen:
        worst = max(stolen, key=lambda r: r["steal"])
        d.p(f"Time stolen by the hypervisor (the CPUs' time in which it ran something else on this virtual machine, "
            f"from `/proc/stat`): {med([r['steal'] for r in stolen]):.1%} over a median measurement, at most "
            f"{worst['steal']:.1%} (during {worst['server']}'s `{worst['scenario']}`). Measurements with much "
            "stolen time run slower and vary more; it rises when the disk is written to.")
        repeated = [r for r in results if r.get("discarded_steal")]
        if repeated:
            discarded = [x for r in repeated for x in r["discarded_steal"]]
            by_server = Counter(r["server"] for r in repeated)
            d.p(f"{len(repeated)} measurements had 10% or more stolen and were taken again (at most twice more, for "
                "every server alike); the attempt with the least stolen time is the one reported, chosen by stolen "
                f"time alone, never by its figure. The {len(discarded)} discarded attempts had "
                f"{min(discarded):.0%}–{max(discarded):.0%} stolen; repeated: "
                f"{', '.join(f'{k} {v}' for k, v in sorted(by_server.items()))}.")
        elif any("discarded_steal" in r for r in results):
            d.p("No measurement had 10% or more of the CPUs' time stolen, so none was taken again.")
        d.p()

    # --- physical limits
    raw = {}
    for r in results:
        if r["scenario"] == "raw-tcp" and r["report"]:
            key = (r["report"]["streams"], r["report"]["size"])
            raw.setdefault(key, []).append(r["report"]["mib_per_sec"])
    in_process = med(next((v for (k, size), v in raw.items() if k == 1), []))
    copies = [r["report"]["mib_per_sec"] for r in results if r["scenario"] == "iperf3" and r["report"]]
    # The reference for one transfer stream: the copy between two processes, as between client and server.
    single_raw = med(copies) or in_process

    writes = [r["report"] for r in results if r["scenario"] == "write" and r["report"]]
    write_limit = med([w["mib_per_sec"] for w in writes])
    replaces = [r["report"] for r in results if r["scenario"] == "replace" and r["report"]]

    d.p("## Summary against the targets")
    d.p()
    summary_at = len(d.lines)
    d.p()

    d.p("## Physical limits")
    d.p()
    rows = []
    if copies:
        rows.append((f"loopback TCP between two processes (iperf3), 1 stream × {mode['transfer_size']}",
                     spread(copies) + " MiB/s"))
    rows += [(f"loopback TCP within one process, {k} stream{'s' if k > 1 else ''} × {size_text(size)}",
              spread(v) + " MiB/s") for (k, size), v in sorted(raw.items())]
    if writes:
        rows.append((f"local write of the same bytes into a new file (256 KiB writes, close), "
                     f"1 × {mode['transfer_size']}", spread([w["mib_per_sec"] for w in writes]) + " MiB/s"))
    if replaces:
        rows.append((f"for comparison: the same, replacing a file of that size (O_TRUNC open), "
                     f"1 × {mode['transfer_size']}", spread([w["mib_per_sec"] for w in replaces]) + " MiB/s"))
    if info["cipher_mib_s"]:
        rows.append(("AES-128-GCM alone, one core, 32 KiB blocks (`openssl speed -evp aes-128-gcm`)",
                     f"{fmt(info['cipher_mib_s'])} MiB/s"))
    d.table(["what", "throughput"], rows)
    d.p("The copy between two processes is iperf3 (`iperf3 -c 127.0.0.1 -n SIZE -l 256K` against `iperf3 -s`): "
        "one process writes from a 256 KiB buffer, the other reads and discards, as client and server do below. "
        "The copy within one process is `ferry bench raw-tcp`: a task writes from a 256 KiB buffer and another "
        "reads into one, in the same process; the runtime may run both on one thread with the bytes still in the "
        "CPU cache, which no client and server can do, so its figure varies widely from run to run. The "
        "single-stream targets below are taken against the copy between two processes (and the share of the "
        "copy within one process is shown beside it). All ends share the 2 cores, as client and server do.")
    if writes:
        d.p("An upload has a second limit: the file system has to take the bytes. The local write is one process "
            "writing them from memory into the page cache, into a new file, as each upload below creates its file "
            "(`ferry bench transfer` deletes the file of the run before first, untimed; the runner measures the "
            "local write before each repetition of the single-stream uploads, after the same `sync`).")
    if replaces:
        split = lambda key: fmt(med([w[key] for w in replaces]), 2)
        d.p("Replacing a file of the same size instead costs far more, in the file system: the median replacement "
            f"splits into {split('open_seconds')} s for the truncating open (freeing the old file's cached pages "
            f"and blocks), {split('write_seconds')} s of writes and {split('close_seconds')} s for the close "
            "(ext4 allocates the blocks of a file truncated to zero and starts writing it back when it is "
            "closed). Any FTP server pays the same when a STOR replaces a large file; the uploads below do not "
            "measure it.")
    d.p()

    # --- single stream
    size = mode["transfer_size"]
    single = pick(results, "transfer", "ftp", ["--size", size, "--streams", "1"])
    d.p(f"## One stream, {size}, plain FTP (page cache)")
    d.p()
    up = {s: med([r["upload"]["mib_per_sec"] for r in v]) for s, v in single.items()}
    down = {s: med([r["download"]["mib_per_sec"] for r in v]) for s, v in single.items()}
    rows = []
    for s, v in ordered(single):
        rows.append((s, spread([r["upload"]["mib_per_sec"] for r in v]),
                     spread([r["download"]["mib_per_sec"] for r in v]),
                     pct(up[s], single_raw), pct(down[s], single_raw),
                     fmt(med([r["upload"]["server_cpu_seconds"] for r in v]), 2),
                     fmt(med([r["download"]["server_cpu_seconds"] for r in v]), 2)))
    d.table(["server", "STOR MiB/s", "RETR MiB/s", "STOR % of TCP", "RETR % of TCP", "server CPU s (STOR)",
             "server CPU s (RETR)"], rows)
    if write_limit:
        d.p("STOR as a share of the local write of the same bytes (medians): " +
            ", ".join(f"{s} {pct(up[s], write_limit)}" for s, _ in ordered(single)) + ".")
        d.p()
    for label, values in (("STOR", up), ("RETR", down)):
        b, who = best_peer(values, FTP_PEERS)
        d.p(f"- {label}: ferry / best peer ({who}) = {ratio(values.get('ferry'), b)}")
        local = (f"; {pct(values.get('ferry'), write_limit)} of the local write, {fmt(write_limit)} MiB/s"
                 if label == "STOR" and write_limit else "")
        targets.append((f"single-stream {label} of {size} ≥ 90% of loopback TCP",
                        f"{pct(values.get('ferry'), single_raw)} ({fmt(values.get('ferry'))} of {fmt(single_raw)} MiB/s; "
                        f"{pct(values.get('ferry'), in_process)} of the copy within one process{local})",
                        ok(values.get("ferry"), single_raw and 0.9 * single_raw)))
    d.p()

    # --- FTPS
    tls = pick(results, "transfer", "ftps", ["--size", size, "--streams", "1"])
    d.p(f"## One stream, {size}, FTPS (explicit TLS, PROT P)")
    d.p()
    rows = []
    for s, v in ordered(tls):
        u, dn = med([r["upload"]["mib_per_sec"] for r in v]), med([r["download"]["mib_per_sec"] for r in v])
        rows.append((s, spread([r["upload"]["mib_per_sec"] for r in v]),
                     spread([r["download"]["mib_per_sec"] for r in v]), pct(u, up.get(s)), pct(dn, down.get(s))))
    d.table(["server", "STOR MiB/s", "RETR MiB/s", "STOR % of its plain", "RETR % of its plain"], rows)
    for label, plain, key in (("STOR", up, "upload"), ("RETR", down, "download")):
        f = med([r[key]["mib_per_sec"] for r in tls.get("ferry", [])])
        targets.append((f"FTPS {label} ≥ 70% of plain", f"{pct(f, plain.get('ferry'))} ({fmt(f)} MiB/s)",
                        ok(f, plain.get("ferry") and 0.7 * plain["ferry"])))
    tls_errors = [r for r in errors(results) if r["protocol"] == "ftps"]
    if tls_errors:
        d.p("FTPS failures: " + "; ".join(f"{r['server']}: {r['error'][:160]}" for r in tls_errors))
        d.p()

    # --- many streams
    many = pick(results, "transfer", "ftp", ["--size", mode["many_size"], "--streams", str(mode["many_streams"])])
    d.p(f"## {mode['many_streams']} clients at once, {mode['many_size']} each, plain FTP")
    d.p()
    rows = []
    mdown = {s: med([r["download"]["mib_per_sec"] for r in v]) for s, v in many.items()}
    mup = {s: med([r["upload"]["mib_per_sec"] for r in v]) for s, v in many.items()}
    for s, v in ordered(many):
        rows.append((s, spread([r["upload"]["mib_per_sec"] for r in v]), spread([r["download"]["mib_per_sec"] for r in v])))
    d.table(["server", "STOR MiB/s (all streams)", "RETR MiB/s (all streams)"], rows)
    b, who = best_peer(mdown, FTP_PEERS)
    d.p(f"- RETR: ferry / best peer ({who}) = {ratio(mdown.get('ferry'), b)}; "
        f"STOR: ferry / best peer = {ratio(mup.get('ferry'), best_peer(mup, FTP_PEERS)[0])}")
    d.p()
    targets.append((f"{mode['many_streams']} concurrent downloaders ahead of the best peer",
                    f"{fmt(mdown.get('ferry'))} vs {who} {fmt(b)} MiB/s", ok(mdown.get("ferry"), b)))

    # --- small files
    small = pick(results, "small", "ftp")
    d.p(f"## Small files: {mode['small_files']} × 4 KiB, {mode['small_clients']} clients, one data connection each")
    d.p()
    stor = {s: med([r["stor_ops_per_sec"] for r in v]) for s, v in small.items()}
    retr = {s: med([r["retr_ops_per_sec"] for r in v]) for s, v in small.items()}
    d.table(["server", "STOR files/s", "RETR files/s"],
            [(s, spread([r["stor_ops_per_sec"] for r in v]), spread([r["retr_ops_per_sec"] for r in v]))
             for s, v in ordered(small)])
    for label, values in (("STOR", stor), ("RETR", retr)):
        b, who = best_peer(values, FTP_PEERS)
        d.p(f"- {label}: ferry / best peer ({who}) = {ratio(values.get('ferry'), b)}")
        targets.append((f"small-file {label}/s ahead of the best peer",
                        f"{fmt(values.get('ferry'))} vs {who} {fmt(b)}", ok(values.get("ferry"), b)))
    d.p()

    # --- list
    lst = pick(results, "list", "ftp")
    d.p(f"## Listing one directory of {mode['list_entries']:,} entries")
    d.p()
    complete = {s: all(r["lines"] >= r["entries"] for r in v) for s, v in lst.items()}
    secs = {s: med([r["seconds"] for r in v]) for s, v in lst.items() if complete[s]}
    grow = {s: med([r["memory_growth_kib"] for r in v]) for s, v in lst.items()}
    d.table(["server", "command", "time s", "entries/s", "server memory growth KiB", "lines", "bytes"],
            [(s, v[0]["command"], spread([r["seconds"] for r in v], 3), fmt(med([r["entries_per_sec"] for r in v])),
              spread([r["memory_growth_kib"] for r in v]),
              f"{v[0]['lines']}" + ("" if complete[s] else " (incomplete: not compared)"), fmt(v[0]["bytes"]))
             for s, v in ordered(lst)])
    b, who = best_peer(secs, FTP_PEERS, higher_is_better=False)
    d.p(f"- ferry / best peer ({who}) time: {ratio(secs.get('ferry'), b, higher_is_better=False)}. The entries were "
        "created directly on disk (`--local-dir`, empty files) once per server directory. vsftpd has no MLSD and "
        "is measured with LIST. Server memory growth is the peak PSS sampled every 10 ms during the listing minus "
        "the PSS before it, each server freshly restarted.")
    d.p()
    targets.append((f"MLSD of {mode['list_entries']:,} entries faster than the best peer",
                    f"{fmt(secs.get('ferry'), 3)} s vs {who} {fmt(b, 3)} s", ok(b, secs.get("ferry"))))
    targets.append(("listing memory bounded (streamed: growth ≤ 1 MiB)", f"+{fmt(grow.get('ferry'))} KiB at peak",
                    ok(1024, grow.get("ferry"))))

    # --- SFTP
    cipher = info["sftp_cipher"]
    d.p(f"## SFTP, {cipher}")
    d.p()
    if info["ferry_lacks_cipher"]:
        d.p(f"**ferry's SSH server does not offer aes128-gcm@openssh.com** (russh leaves it out of its default list "
            f"and ferry-ssh does not add it): `{info['ferry_lacks_cipher'][:200]}`. Both servers are therefore "
            f"compared with {cipher}, the closest cipher both offer.")
        d.p()
        targets.append(("SFTP with aes128-gcm@openssh.com", "not offered by ferry", "missed"))
    rows = []
    sftp_ratios = {}
    for label, args in (("1 stream", ["--size", mode["sftp_size"], "--streams", "1"]),
                        (f"{mode['sftp_streams']} streams",
                         ["--size", mode["sftp_stream_size"], "--streams", str(mode["sftp_streams"])])):
        res = pick(results, "transfer", "sftp", args)
        for s, v in ordered(res):
            rows.append((label, s, spread([r["upload"]["mib_per_sec"] for r in v]),
                         spread([r["download"]["mib_per_sec"] for r in v]),
                         fmt(med([r["download"]["server_cpu_seconds"] for r in v]), 2),
                         fmt(med([r["download"]["client_cpu_seconds"] for r in v]), 2),
                         fmt(med([r["download"]["seconds"] for r in v]), 2)))
        for key in ("upload", "download"):
            f = med([r[key]["mib_per_sec"] for r in res.get("ferry", [])])
            o = med([r[key]["mib_per_sec"] for r in res.get("openssh", [])])
            sftp_ratios[(label, key)] = (f, o)
            targets.append((f"SFTP {label} {'put' if key == 'upload' else 'get'} ≥ 80% of OpenSSH",
                            f"{pct(f, o)} ({fmt(f)} vs {fmt(o)} MiB/s)", ok(f, o and 0.8 * o)))
    d.table(["streams", "server", "upload MiB/s", "download MiB/s", "server CPU s (download)",
             "client CPU s (download)", "download wall s"], rows)
    sess = pick(results, "sessions", "sftp")
    if sess:
        d.table(["server", "SFTP sessions", "logins/s", "memory per session KiB"],
                [(s, v[0]["sessions_opened"], spread([r["logins_per_sec"] for r in v]),
                  spread([r["per_session_kib"] for r in v], 1)) for s, v in ordered(sess)])
    d.p("OpenSSH is sshd with its own sftp-server, one process pair per connection; both are driven by the same "
        "russh client (russh-sftp, 64 requests in flight) with only the cipher above offered. The client's CPU "
        "time is shown because on 2 cores a client near one full core per stream would be a bottleneck of its own.")
    d.p()

    # --- sessions
    d.p("## Idle logged-in FTP sessions")
    d.p()
    sessions = [r for r in results if r["scenario"] == "sessions" and r["protocol"] == "ftp" and r["report"]]
    by = {}
    for r in sessions:
        by.setdefault((r["server"], r["report"]["sessions_requested"]), []).append(r["report"])
    ns = sorted({n for (_, n) in by})
    servers = [s for s in ["ferry"] + FTP_PEERS if any((s, n) in by for n in ns)]
    rows = []
    for s in servers:
        row = [s]
        for n in ns:
            v = by.get((s, n))
            row.append("–" if not v else
                       f"{spread([r['per_session_kib'] for r in v], 2)} KiB, {fmt(med([r['logins_per_sec'] for r in v]))}/s"
                       + ("" if all(r["sessions_opened"] == n for r in v) else
                          f" (opened {min(r['sessions_opened'] for r in v)})"))
        rows.append(row)
    d.table(["server"] + [f"N = {n:,}" for n in ns], rows)
    d.p("Each cell: server memory per session (PSS of the server and all its processes after the logins minus "
        "before, divided by N; each server restarted before each measurement and logged into once before the "
        "baseline, so that one-time costs of a first login are not spread over the sessions), then logins per "
        "second (N over the "
        "time until the last login, 32 logins in flight, source addresses 127.0.0.1–127.0.0.20). Forking servers "
        "stop at 10,000 sessions (at their per-session cost 19,000 would take most of the machine's memory and "
        "more processes than pid_max allows) and, logging in at 100–200 sessions/s, are measured once per N; "
        "ferry and pyftpdlib are repeated where the targets are set.")
    d.p()
    d.p("![memory per idle session and login rate versus N](benchmarks-sessions.svg)")
    d.p()
    repeat_n = mode["sessions_repeat_n"] or max(ns, default=0)
    ferry_at = by.get(("ferry", repeat_n), [])
    kib = med([r["per_session_kib"] for r in ferry_at])
    targets.insert(0, (f"idle FTP session ≤ 2 KiB at N = {repeat_n:,}", f"{fmt(kib, 2)} KiB", ok(2.0, kib)))
    ferry_series = [med([r["per_session_kib"] for r in by[("ferry", n)]]) for n in ns if ("ferry", n) in by]
    if len(ferry_series) > 1 and all(v is not None for v in ferry_series):
        first, last = ferry_series[0], ferry_series[-1]
        targets.insert(1, (f"memory per session flat from {ns[0]:,} to {ns[-1]:,} (does not grow with N)",
                           " → ".join(f"{fmt(v, 2)}" for v in ferry_series) + " KiB",
                           "met" if last <= 1.1 * min(ferry_series) and last <= first * 1.1 else "**missed**"))
    if kib:
        targets.insert(2, ("projection for 1,000,000 idle FTP sessions", f"{kib * 1e6 / 1048576:.1f} GiB", "–"))
    logins = {s: med([r["logins_per_sec"] for r in by.get((s, repeat_n), [])]) for s in servers + [FLOOR]}
    py, floor = logins.get("pyftpdlib"), logins.get(FLOOR)
    floor_text = f" (with no server work, {FLOOR}: {fmt(floor)}/s = {ratio(floor, py)})" if floor else ""
    targets.insert(3, ("logins/s ≥ 3× pyftpdlib (plain-text authorizer)",
                       f"{fmt(logins.get('ferry'))}/s vs {fmt(py)}/s = {ratio(logins.get('ferry'), py)}{floor_text}",
                       ok(logins.get("ferry"), py and 3 * py)))
    at = [(s, by.get((s, repeat_n), [])) for s in servers + [FLOOR]]
    d.table(["server", f"logins/s at N = {repeat_n:,}", "server CPU µs per login", "client CPU µs per login"],
            [(s, spread([r["logins_per_sec"] for r in v]),
              fmt(med([1e6 * r["server_cpu_seconds"] / r["sessions_opened"] for r in v
                       if r["server_cpu_seconds"] is not None and r["sessions_opened"]])),
              fmt(med([1e6 * r["client_cpu_seconds"] / r["sessions_opened"] for r in v if r["sessions_opened"]])))
             for s, v in at if v])
    d.p("CPU per login is the server's (and its children's) user+system time over the login phase divided by N; "
        "for forking servers it counts the session processes alive at the end. On 2 shared cores the load "
        "generator's own CPU per login matters: the login rates of the fastest servers are partly bounded by it. "
        f"{FLOOR} (`ferry bench null-ftp`, started as a server is) answers the greeting, USER and PASS and does "
        "nothing else: no account, no session state, no log. Its login rate is what the kernel's TCP work, the "
        "async runtime's and the load generator's leave on this machine: about what a server whose own work cost "
        "nothing would reach.")
    d.p()
    d.p("Login work differs by design: ferry verifies an argon2id hash (and caches a successful verification in "
        "memory, keyed by a salted digest of the password, so repeated logins of one account are cheap); vsftpd "
        "(PAM), pure-ftpd and ProFTPD check the SHA-512 crypt hash in /etc/shadow, once per session process; "
        "pyftpdlib compares plain text.")
    d.p()

    # --- failures
    failed = errors(results)
    if failed:
        d.p("## Runs that failed")
        d.p()
        d.table(["server", "scenario", "arguments", "error"],
                [(r["server"], r["scenario"] + f" ({r['protocol']})", " ".join(r["args"]),
                  r["error"].replace("|", "/").replace("\n", " ")[:300]) for r in failed])

    findings = Path(__file__).resolve().parent / "findings.md"
    if findings.exists():
        d.p(findings.read_text().rstrip())
        d.p()

    # --- method, versions, configs
    d.p("## Method")
    d.p()
    d.p("`bench/run` fetches vsftpd, pure-ftpd, ProFTPD, OpenSSH's server and iperf3 as Debian packages with "
        "`apt-get download`, unpacks them with `dpkg -x` under `bench/.work/` (with the libraries they need that the "
        "machine lacks; nothing is installed), installs pyftpdlib in a virtualenv there, builds ferry in release "
        "mode, creates the local user `ferrybench` (SHA-512 crypt password) that the FTP peers and sshd authenticate "
        "against, and then runs `bench/runner.py`, which starts every server on its own loopback port and drives "
        "them with `ferry bench` (see `ferry bench --help`): a hand-written async FTP client and russh for SFTP, "
        "each call a separate process with `--json` output. The scenarios run one server at a time, servers in "
        "rotating order per repetition. File data lives in the page cache: each upload creates its file and the "
        "download reads it right after; small files replace those of the repetition before (the first repetition "
        "creates them).")
    d.p()
    settings = info.get("kernel_settings", {})
    if settings:
        changed = "; ".join(f"`{path}` {before} -> {value}" for path, (before, value) in settings.items())
        d.p(f"The run changes these kernel settings and restores them at its end: {changed}. Every server runs under "
            "them alike.")
        d.p()
    if any(path.endswith("page_reporting_order") for path in settings):
        d.p("Page reporting: the virtual machine hands memory its kernel frees back to the hypervisor (virtio-balloon "
            "free page reporting), and the first write into such a page afterwards faults in the host: a 1 GiB file "
            "write into memory freed a moment before ran at 599–1,040 MiB/s with 1.0–1.7 s of CPU, into memory "
            "touched since at 3,200–4,500 MiB/s with 0.23–0.32 s (2026-12-04), so that an upload measured the host's "
            "page faults more than the server. The run turns reporting off (order 11: no block qualifies) and "
            "writes once into all free memory first, so that the pages handed back before are backed again.")
        d.p()
    if any(path.endswith("tcp_max_tw_buckets") for path in settings):
        d.p("TIME_WAIT: each small-file transfer is a data connection of its own, whose closing end keeps its port "
            "in TIME_WAIT for a minute; five repetitions against five servers in a row used up the ephemeral ports "
            "(pyftpdlib's bind of a passive port failed with EADDRINUSE at 98,523 sockets in TIME_WAIT). Loopback "
            "neither delays nor loses segments, which TIME_WAIT guards against; the run keeps at most the number "
            "above, and the kernel closes the others at once.")
        d.p()
    d.p("The `ferry bench` calls behind the tables (URL is each server's, `--pid` its process):")
    d.p()
    d.p("```")
    seen = []
    for r in results:
        if r["scenario"] in ("iperf3", "write", "replace"):
            continue
        url = {"tcp": "", "ftp": " ftp://USER:PASSWORD@127.0.0.1:PORT/", "ftps": " ftps://USER:PASSWORD@127.0.0.1:PORT/",
               "sftp": " sftp://USER:PASSWORD@127.0.0.1:PORT/"}[r["protocol"]]
        extra = []
        if r["scenario"] in ("sessions", "transfer", "small", "list") and r["server"] != "loopback":
            extra.append("--pid PID")
        if r["scenario"] == "list":
            extra.append("--local-dir SERVER_DIR")
        if r["cipher"]:
            extra.append(f"--cipher {r['cipher']}")
        line = " ".join(["ferry bench", r["scenario"] + url, *r["args"], *extra, "--json"])
        if line not in seen:
            seen.append(line)
    d.p("\n".join(seen))
    d.p("```")
    d.p()
    d.p("## Versions")
    d.p()
    d.table(["component", "version"], list(info["versions"].items()))
    d.p("## Configurations")
    d.p()
    d.p(f"ferry: `{info['ferry_command'].replace(str(Path(__file__).resolve().parent), 'bench')}` with "
        "`FERRY_LOG=warn` (no per-event log lines, as the peers run without transfer logs), the account `bench` "
        "created by `ferry user add` (argon2id), everything else default.")
    d.p()
    for name, title in (("vsftpd.conf", "vsftpd"), ("pure-ftpd.args", "pure-ftpd (command-line options)"),
                        ("proftpd.conf", "ProFTPD"), ("pyftpdlib_server.py", "pyftpdlib"),
                        ("sshd_config", "OpenSSH sshd")):
        d.p(f"### {title} (`bench/peers/{name}`)")
        d.p()
        d.p("```")
        d.p((PEERS_DIR / name).read_text().rstrip())
        d.p("```")
        d.p()

    summary = Doc()
    summary.table(["target", "ferry measured", "status"], targets)
    d.lines[summary_at:summary_at] = summary.lines
    return "\n".join(d.lines) + "\n", svg_plot(by, ns, servers)


def ordered(by_server):
    order = ["ferry", "vsftpd", "pure-ftpd", "proftpd", "pyftpdlib", "openssh"]
    return sorted(by_server.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)


def pct(value, reference):
    """`value` as a whole percentage of `reference`, rounded down: 89.7% reads 89%, not a 90% that misses a 90%
    target."""
    if value is None or not reference:
        return "–"
    return f"{math.floor(100 * value / reference)}%"


def ok(value, threshold):
    if value is None or threshold is None:
        return "not measured"
    return "met" if value >= threshold else "**missed**"


def size_text(n):
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


def svg_plot(by, ns, servers):
    """Two panels: memory per session (log scale) and logins/s, versus N."""
    import math

    width, height, panel_w, top, bottom, left = 960, 420, 400, 50, 60, 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>']
    if not ns:
        return "\n".join(out + ["</svg>"]) + "\n"
    xmin, xmax = min(ns), max(ns)

    def x_of(n, x0):
        if xmax == xmin:
            return x0 + panel_w / 2
        return x0 + (math.log10(n) - math.log10(xmin)) / (math.log10(xmax) - math.log10(xmin)) * panel_w

    panels = [("server memory per idle session (KiB, log scale)", "per_session_kib", True),
              ("logins per second", "logins_per_sec", False)]
    for i, (title, key, log_scale) in enumerate(panels):
        x0 = left + i * (panel_w + 90)
        plot_h = height - top - bottom
        series = {s: [(n, med([r[key] for r in by[(s, n)]])) for n in ns if (s, n) in by] for s in servers}
        values = [v for pts in series.values() for _, v in pts if v is not None and v > 0]
        if not values:
            continue
        if log_scale:
            lo, hi = 10 ** math.floor(math.log10(min(values))), 10 ** math.ceil(math.log10(max(values)))
            y_of = lambda v: top + plot_h - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * plot_h
            ticks = [10 ** e for e in range(int(math.log10(lo)), int(math.log10(hi)) + 1)]
        else:
            lo, hi = 0, max(values) * 1.1
            y_of = lambda v: top + plot_h - (v - lo) / (hi - lo) * plot_h
            step = 10 ** math.floor(math.log10(hi / 2))
            ticks = [k * step for k in range(0, int(hi / step) + 1)]
        out.append(f'<text x="{x0}" y="{top - 20}" font-weight="bold">{title}</text>')
        out.append(f'<rect x="{x0}" y="{top}" width="{panel_w}" height="{plot_h}" fill="none" stroke="#999"/>')
        for t in ticks:
            y = y_of(t) if t > 0 or not log_scale else None
            if y is None or y < top - 1 or y > top + plot_h + 1:
                continue
            out.append(f'<line x1="{x0}" x2="{x0 + panel_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{t:,.0f}</text>')
        for n in ns:
            x = x_of(n, x0)
            out.append(f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{n:,}</text>')
        out.append(f'<text x="{x0 + panel_w / 2}" y="{top + plot_h + 40}" text-anchor="middle">'
                   'sessions N (log scale)</text>')
        for s, pts in series.items():
            pts = [(n, v) for n, v in pts if v is not None and v > 0]
            if not pts:
                continue
            path = " ".join(f"{x_of(n, x0):.1f},{y_of(v):.1f}" for n, v in pts)
            color = COLORS.get(s, "#333")
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            for n, v in pts:
                out.append(f'<circle cx="{x_of(n, x0):.1f}" cy="{y_of(v):.1f}" r="3" fill="{color}"/>')
    for j, s in enumerate(servers):
        x = left + j * 120
        out.append(f'<rect x="{x}" y="8" width="12" height="4" fill="{COLORS.get(s, "#333")}"/>')
        out.append(f'<text x="{x + 16}" y="14">{s}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    # Re-renders the documents from a saved run: python3 bench/report.py [bench/.work/results.json]
    import json
    import sys

    here = Path(__file__).resolve().parent
    saved = Path(sys.argv[1]) if len(sys.argv) > 1 else here / ".work" / "results.json"
    data = json.loads(saved.read_text())
    md, svg = render(data["info"], data["results"])
    (here.parent / "docs" / "benchmarks.md").write_text(md)
    (here.parent / "docs" / "benchmarks-sessions.svg").write_text(svg)
    print(f"wrote docs/benchmarks.md and docs/benchmarks-sessions.svg from {saved}")
