"""FHIR API throughput: server candidates side by side, and the full application
against a floor that runs the same SQL (bench/bare.py), in one run.

    make db && .venv/bin/python bench/fhir_bench.py [--duration 10] [--connections 8]
        [--servers granian,gunicorn-gthread,...] [--floor] [--rounds 3]

Targets are (server, application) pairs: with --servers, the full application
(clinik.wsgi) under each named server of bench/servers.py; with --floor, the full
application and bench/bare.py, both under the chosen server (bench/servers.CHOSEN).
Loads --patients Patients (10 per family name, for the search workload), warms
every target up, then drives them with wrk in alternation, round after round:
POST Patient, GET Patient/{id} and GET Patient?family=X (10 matches, with a total).
Each figure reported is the median round with the spread (min-max) of the rounds.

CPU per request: the server's processes (master and workers), PostgreSQL's, Redis's
and wrk's own (its rusage as our child), read from /proc; and the machine's busy
time from /proc/stat over the wrk run, which includes every other process on the
machine (other work on a shared machine shows there, not in the per-class figures).
wrk runs on this machine, so it competes with the servers for the cores: compare
targets within one run, not runs with runs.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import servers  # noqa: E402
from bench.common import create_org  # noqa: E402

BENCH = ROOT / "bench"
PY = sys.executable
DB = os.environ.get("DATABASE_URL", "postgres://clinik@127.0.0.1:5432/clinik")
FAMILIES = 1000
WORKLOADS = (
    ("POST", "post_patient.lua"),
    ("GET", "get_patient.lua"),
    ("SEARCH", "search_family.lua"),
)
APPS = {"full": "clinik.wsgi:application", "bare": "bench.bare:application"}


def start(server: str, app: str, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        servers.command(server, app, port),
        cwd=ROOT,
        env={
            **os.environ,
            "DEBUG": "true",
            # settings.DEBUG off as in production (bench/nodebug_settings.py)
            "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings",
            "LOG_LEVEL": "WARNING",
            # The benchmark measures throughput, not the plan's rate limits.
            "RATE_LIMIT_IP_REQUESTS": "100000000",
            "RATE_LIMIT_KEY_REQUESTS": "100000000",
            "RATE_LIMIT_ORG_REQUESTS": "100000000",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/fhir/R4/Patient/x", timeout=1)
        except urllib.error.HTTPError:
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{server} {app} did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()


_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_by_process(app_pid: int) -> dict[str, dict[int, float]]:
    """CPU milliseconds used so far by the server under test (every process under
    the one started), the PostgreSQL backends connected to our database (their
    process title names it; PostgreSQL's shared background processes and other
    databases' backends are left out, as other work on this machine uses them), and
    Redis (shared: other work on the machine shows in it), read from /proc."""
    parents: dict[int, int] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        # Own time plus that of reaped children (PostgreSQL backends that exited).
        ticks = sum(int(field) for field in fields[11:15])
        stats[int(entry.name)] = (name, ticks * _TICK_MS)
    totals: dict[str, dict[int, float]] = {"app": {}, "postgres": {}, "redis": {}}
    for pid, (name, ms) in stats.items():
        ancestor = pid
        while ancestor not in (0, 1, app_pid) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == app_pid:
            totals["app"][pid] = ms
        elif name == "postgres" and _our_backend(pid):
            totals["postgres"][pid] = ms
        elif name.startswith("redis-server"):
            totals["redis"][pid] = ms
    return totals


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings by the processes alive at the second (a process
    that ended in between, e.g. a database connection closed, is left out)."""
    return sum(ms - before.get(pid, 0.0) for pid, ms in after.items())


_DB_NAME = f" {DB.rsplit('/', 1)[-1].split('?')[0]} ".encode()


def _our_backend(pid: int) -> bool:
    try:
        return _DB_NAME in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def machine_busy_ms() -> float:
    """Busy CPU milliseconds of the whole machine so far (/proc/stat: all but idle
    and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) * _TICK_MS


def children_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def wrk(
    script: str, port: int, env: dict[str, str], args: argparse.Namespace, duration: int
) -> dict:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, args.connections)}",
            f"-c{args.connections}",
            f"-d{duration}s",
            "-s",
            str(BENCH / "wrk" / script),
            f"http://127.0.0.1:{port}",
        ],
        env={**os.environ, **env, "BENCH_DIR": str(BENCH)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def measure(
    script: str, port: int, server_pid: int, env: dict[str, str], args: argparse.Namespace
) -> dict:
    before, machine, wrk_cpu = cpu_by_process(server_pid), machine_busy_ms(), children_cpu_ms()
    result = wrk(script, port, env, args, args.duration)
    machine, wrk_cpu = machine_busy_ms() - machine, children_cpu_ms() - wrk_cpu
    after = cpu_by_process(server_pid)
    requests = max(1, result["requests"])
    cpu = {what: cpu_delta(before[what], after[what]) / requests for what in before}
    cpu["wrk"] = wrk_cpu / requests
    cpu["sum"] = sum(cpu.values())
    cpu["machine"] = machine / requests
    result["cpu_ms_per_request"] = {what: round(ms, 3) for what, ms in cpu.items()}
    return result


def _patient(family: str) -> bytes:
    patient = json.loads((BENCH / "wrk" / "patient.json").read_bytes())
    patient["name"][0]["family"] = family
    return json.dumps(patient).encode()


def load_patients(org_id: str, port: int, key: str, wanted: int) -> tuple[list[str], list[str]]:
    """At least `wanted` Patients named Fam000..Fam999 (wanted/1000 per family name),
    created through the API; their ids and the family names."""
    families = [f"Fam{n:03d}" for n in range(FAMILIES)]

    def existing() -> list[str]:
        with psycopg.connect(DB) as conn, conn.transaction():
            conn.execute("SELECT set_config('clinik.org_id', %s, true)", [org_id])
            rows = conn.execute(
                "SELECT id FROM fhir_resource WHERE org_id = %s AND resource_type = 'Patient'"
                " AND content::jsonb->'name'->0->>'family' LIKE 'Fam%%'",
                [org_id],
            ).fetchall()
        return [r[0] for r in rows]

    def create(n: int) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/fhir/R4/Patient",
            data=_patient(families[n % FAMILIES]),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"},
        )
        urllib.request.urlopen(request, timeout=30).read()

    ids = existing()
    if len(ids) < wanted:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create, range(len(ids), wanted)))
        ids = existing()
        with psycopg.connect(os.environ.get("DATABASE_OWNER_URL", DB), autocommit=True) as conn:
            conn.execute("ANALYZE")
    return ids, families


def bench_org() -> dict[str, str]:
    """The organization of earlier runs against this database (its Patients are
    loaded already), else a new one."""
    saved = ROOT / "var" / f"fhir_bench_org.{DB.rsplit('/', 1)[-1]}.json"
    if saved.exists():
        org = json.loads(saved.read_text())
        with psycopg.connect(DB) as conn:
            if conn.execute(
                "SELECT 1 FROM accounts_organization WHERE id = %s", [org["org_id"]]
            ).fetchone():
                return org
    org = create_org("Bench", "bench@example.com")
    saved.write_text(json.dumps(org))
    return org


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=3, help="seconds per workload, unmeasured")
    parser.add_argument(
        "--rounds", type=int, default=3, help="targets alternate, round after round"
    )
    parser.add_argument("--servers", default="", help="comma-separated names of bench/servers.py")
    parser.add_argument("--floor", action="store_true", help="add bench/bare.py (chosen server)")
    parser.add_argument("--workloads", default="POST,GET,SEARCH")
    args = parser.parse_args()
    targets = [(name, "full") for name in args.servers.split(",") if name]
    if args.floor or not targets:
        targets = [t for t in targets if t != (servers.CHOSEN, "full")]
        targets += [(servers.CHOSEN, "full"), (servers.CHOSEN, "bare")]
    workloads = [w for w in WORKLOADS if w[0] in args.workloads.split(",")]
    org = bench_org()
    files = tempfile.mkdtemp()
    env = {
        "API_KEY": org["api_key"],
        "IDS_FILE": f"{files}/ids",
        "FAMILIES_FILE": f"{files}/families",
    }
    runs: dict[str, list[dict]] = {}
    base = 18100 + os.getpid() % 500 * 10
    ports = {target: base + n for n, target in enumerate(targets)}
    processes: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
    try:
        for target, port in ports.items():
            if target[1] == "full":
                processes[target] = start(target[0], APPS[target[1]], port)
        first = next(iter(ports.values()))
        ids, families = load_patients(org["org_id"], first, org["api_key"], args.patients)
        Path(env["IDS_FILE"]).write_text("\n".join(ids) + "\n")
        Path(env["FAMILIES_FILE"]).write_text("\n".join(families) + "\n")
        if any(app == "bare" for _server, app in targets):
            # The floor replays the application's own statements (bench/bare.py).
            statements = subprocess.run(
                [PY, "bench/bare_capture.py", org["api_key"], ids[0], families[1]],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "DEBUG": "true", "LOG_LEVEL": "WARNING"},
            ).stdout
            Path(files, "statements.json").write_text(statements)
            os.environ["BARE_STATEMENTS"] = str(Path(files, "statements.json"))
            for target, port in ports.items():
                if target[1] == "bare":
                    processes[target] = start(target[0], APPS[target[1]], port)
        # Warm every worker thread and connection up (lazy definition tables, the
        # search registry, first queries), then measure the steady state.
        for port in ports.values():
            for _verb, script in workloads:
                wrk(script, port, env, args, args.warmup)
        for _ in range(args.rounds):
            for verb, script in workloads:
                for target, port in ports.items():
                    result = measure(script, port, processes[target].pid, env, args)
                    runs.setdefault(f"{target[0]} {target[1]} {verb}", []).append(result)
    finally:
        for process in processes.values():
            stop(process)
    report(runs, targets, workloads, args)


def report(
    runs: dict[str, list[dict]], targets: list, workloads: list, args: argparse.Namespace
) -> None:
    print(
        f"{'target':<42} {'req/s median (min-max)':>24} {'p50 ms':>7} {'p99 ms':>7} {'err':>5}"
        "   CPU ms/request: app / postgres / redis / wrk = sum; machine (min-max)"
    )
    for verb, _script in workloads:
        for server, app in targets:
            name = f"{server} {app} {verb}"
            rounds = runs[name]
            rps = [r["rps"] for r in rounds]
            middle = min(rounds, key=lambda r: abs(r["rps"] - statistics.median(rps)))
            cpu = middle["cpu_ms_per_request"]
            machine = [r["cpu_ms_per_request"]["machine"] for r in rounds]
            print(
                f"{name:<42} {spread(rps):>24} {middle['p50_ms']:>7.2f} {middle['p99_ms']:>7.2f}"
                f" {sum(r['errors'] for r in rounds):>5}"
                f"   {cpu['app']:.2f} / {cpu['postgres']:.2f} / {cpu['redis']:.2f}"
                f" / {cpu['wrk']:.2f} = {cpu['sum']:.2f}; {statistics.median(machine):.2f}"
                f" ({min(machine):.2f}-{max(machine):.2f})"
            )
    first = targets[0]
    for verb, _script in workloads:
        reference = statistics.median(r["rps"] for r in runs[f"{first[0]} {first[1]} {verb}"])
        for server, app in targets[1:]:
            value = statistics.median(r["rps"] for r in runs[f"{server} {app} {verb}"])
            print(f"{verb}: {server} {app} / {first[0]} {first[1]}: {value / reference:.2f}")
    if ("granian", "bare") in targets:
        for verb, _script in workloads:
            full = statistics.median(r["rps"] for r in runs[f"{servers.CHOSEN} full {verb}"])
            bare = statistics.median(r["rps"] for r in runs[f"{servers.CHOSEN} bare {verb}"])
            print(f"full/floor {verb}: {full / bare:.0%}")
    print(json.dumps({"args": vars(args), "rounds": runs}))


if __name__ == "__main__":
    main()
