"""`bacpipes demo` as a user runs it: the real command, in its own folder (named with quotes, a backslash and
a non-ASCII letter), with its own databases, broker, virtual building, agent, flows and app; checked on what
it leaves behind, then run again, stopped with its output pipe gone, and reset and stopped by the terminal
closing: however it stops, every process it started stops with it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from bacpipes.cli.servers import listening
from bacpipes.waiting import poll_until

pytestmark = pytest.mark.timeout(400)

MARK = "BACPIPES_DEMO_TEST"  # inherited by everything the demo starts, however it starts it


class Run:
    """The demo as a child process; its output read as it comes (and closable, as when `tee` dies)."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.directory = directory
        self.mark = uuid.uuid4().hex
        self.started = time.monotonic()
        self.output = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bacpipes.cli", "demo", "--dir", str(directory), "--days", "10",
             "--status-every", "3", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, MARK: self.mark},
        )

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        if not self.proc.stdout.closed and select.select([self.proc.stdout], [], [], 0.2)[0]:
            self.output += os.read(self.proc.stdout.fileno(), 65536)

    def wait_until(self, check: Callable[[], object], timeout: float, what: str) -> object:
        """Read the output until `check()` holds; fail at once if the demo exits."""
        def ready() -> object:
            self._pump()
            assert self.proc.poll() is None, f"the demo exited ({self.proc.returncode}):\n{self.text}"
            return check()

        return poll_until(ready, timeout, interval=0, what=what)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        return self.wait_until(lambda: re.search(pattern, self.text), timeout, repr(pattern))

    def finish(self, timeout: float = 180) -> float:
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            out, _ = self.proc.communicate(timeout=timeout)
            self.output += out
        assert self.proc.wait(timeout) == 0, self.text
        return time.monotonic() - self.started

    def processes(self) -> list[str]:
        return started_by(self.mark, self.directory)

    def ports(self) -> list[int]:
        ports = list(json.loads((self.directory / "demo.json").read_text())["ports"].values())
        return ports + [int(p) for p in re.findall(r"app \(\w+\):\s+http://127\.0\.0\.1:(\d+)", self.text)]


def started_by(mark: str | None, folder: Path) -> list[str]:
    """Every process a demo started: it inherited the demo's environment (the postmasters, Mosquitto, the
    apps, the flows child, Prefect's server), names the folder on its command line, or works in it (a
    PostgreSQL backend rewrites its command line, and its environment with it, but keeps its cwd)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        proc = Path("/proc") / pid
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:  # gone meanwhile, or a zombie
            continue
        ours = (mark is not None and f"{MARK}={mark}".encode() in environ) or str(folder) in cmdline
        if (ours or cwd == str(folder) or cwd.startswith(f"{folder}/")) and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


def demo_processes(directory: Path) -> list[str]:
    """Every process of any demo run in the folder."""
    return started_by(None, directory)


def inference_lines(directory: Path) -> list[str]:
    """The demo log's lines about inference and its errors (the log is kept in the folder)."""
    log = directory / "logs" / "demo.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line for line in lines if "inference" in line or "ERROR" in line or "model" in line][-40:]


def count(dsn: str, query: str, *params: object) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute(query, params).fetchone()[0]


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    # not pytest's tmp_path: it is 0700 root, which the `postgres` user (root runs the servers as it)
    # could not enter
    directory = Path(tempfile.mkdtemp(prefix="bacpipes-demo-"))
    directory.chmod(0o755)
    # quotes, a backslash, a space and a non-ASCII letter: settings files, PostgreSQL and Mosquitto take it
    demo = directory / "the \"demo\" folder, o'brien\\é"
    yield demo
    left = demo_processes(demo)
    shutil.rmtree(directory, ignore_errors=True)
    assert not left, left


@pytest.fixture(scope="module")
def first_run(folder: Path) -> dict:
    run = Run(folder)  # stopped by Ctrl-C once observed (a timer could run out before the checks)
    url = run.wait_for(r"app \(site\):\s+(http://127\.0\.0\.1:\d+)", 240).group(1)
    central_url = run.wait_for(r"app \(central\):\s+(http://127\.0\.0\.1:\d+)", 5).group(1)
    password = run.wait_for(r"user / password:\s+demo / (\S+)", 5).group(1)
    health = {}
    for name, address in (("site", url), ("central", central_url)):
        with urllib.request.urlopen(f"{address}/_stcore/health", timeout=5) as answer:
            health[name] = (answer.status, answer.read().decode())
    ports = json.loads((folder / "demo.json").read_text())["ports"]
    site = f"postgresql://postgres@127.0.0.1:{ports['site_db']}/bacpipes"
    central = f"postgresql://postgres@127.0.0.1:{ports['central_db']}/bacpipes"
    site_id = tomllib.loads((folder / "site.toml").read_text(encoding="utf-8"))["site"]["id"]
    # the zones inference decides for: their cooling setpoints carry ML limits (3 on the RC model, 15 on
    # EnergyPlus's medium office)
    zones = count(site, "SELECT count(*) FROM point WHERE object_name LIKE '%%-ZN-CLG-SP'"
                  " AND ml_max_value IS NOT NULL")
    run.wait_for(r"\d+ readings published", 30)  # a status line: the agent is publishing
    with psycopg.connect(site, connect_timeout=5) as conn:  # who is connected to the site's database
        site_users = {r[0] for r in conn.execute("SELECT DISTINCT usename FROM pg_stat_activity"
                                                 " WHERE datname = 'bacpipes' AND pid <> pg_backend_pid()")}
    without_password = {}
    for role in ("bacpipes_edge", "bacpipes_app"):  # the processes' roles are not trusted on loopback
        try:
            no_password = f"postgresql://{role}@127.0.0.1:{ports['site_db']}/bacpipes"
            psycopg.connect(no_password, connect_timeout=5).close()
            without_password[role] = "connected"
        except psycopg.OperationalError as exc:
            without_password[role] = str(exc)
    live = "SELECT count(*) FROM sensor_readings WHERE time > now() - interval '2 minutes'"
    # a decision per zone, in shadow (no command): a setpoint, or, with no one expected for the MPC's
    # horizon (nights, weekends), a step back to the building's own schedule
    shadow = ("SELECT count(*) FROM inference_log WHERE mode = 'shadow' AND command_id IS NULL"
              " AND (setpoint IS NOT NULL OR detail LIKE 'unoccupied for the next %%')")
    observed = {
        "site_readings": count(site, "SELECT count(*) FROM sensor_readings"),
        "central_readings": count(central, "SELECT count(*) FROM sensor_readings WHERE site_id = %s",
                                  site_id),
        "site_live": count(site, live),
        "registered": count(central, "SELECT count(*) FROM model_registry"),
        "site_shadow": count(site, "SELECT count(*) FROM model_deployments WHERE mode = 'shadow'"),
        "baselines": count(central, "SELECT count(*) FROM baseline_models WHERE meets_guideline_14"),
        "users": count(site, "SELECT count(*) FROM app_users WHERE username = 'demo' AND role = 'operator'"),
        "shadow_decisions": count(site, shadow),
    }
    # the live readings reach central too; inference runs its first round (and a failed one is retried
    # within a minute)
    deadline = time.monotonic() + 90
    while (count(central, live) == 0 or observed["shadow_decisions"] < zones) and time.monotonic() < deadline:
        time.sleep(0.5)
        observed["shadow_decisions"] = count(site, shadow)
    observed["central_live"] = count(central, live)
    with psycopg.connect(site, connect_timeout=5) as conn:  # what inference said, for a failure's message
        observed["inference_details"] = conn.execute(
            "SELECT mode, detail, count(*) FROM inference_log GROUP BY 1, 2").fetchall()
    run.proc.send_signal(signal.SIGINT)
    elapsed = run.finish()
    return {"run": run, "site_users": site_users, "without_password": without_password, "url": url,
            "central_url": central_url, "password": password, "health": health,
            "ports": ports, "site": site, "central": central, "elapsed": elapsed, "zones": zones,
            "state": json.loads((folder / "demo.json").read_text()), **observed}


def test_first_run_brings_up_the_whole_platform(folder: Path, first_run: dict) -> None:
    r = first_run
    assert r["health"] == {"site": (200, "ok"), "central": (200, "ok")}
    # the default building: EnergyPlus's medium office in Tampa when pyenergyplus-lbnl is installed
    energyplus = importlib.util.find_spec("pyenergyplus") is not None
    assert r["state"]["building"]["building"] == (
        "energyplus:ASHRAE901_OfficeMedium_STD2019_Denver" if energyplus else "rc")
    assert r["zones"] == (15 if energyplus else 3)
    # 10 days every 5 min of 53 points (RC) or 158 (EnergyPlus), and the live ones
    assert r["site_readings"] > (400_000 if energyplus else 100_000)
    assert r["central_readings"] >= r["site_readings"] - 1_000  # replicated (live ones may lag a little)
    assert r["site_live"] > 0 and r["central_live"] > 0
    assert r["registered"] == 1 and r["site_shadow"] == 1  # trained on central, deployed to the site
    assert r["baselines"] == 1 and r["users"] == 1
    # one per zone: the model decided, in shadow, wrote nothing
    assert r["shadow_decisions"] == r["zones"], (r["inference_details"], inference_lines(folder))
    credentials = folder / "credentials.txt"
    assert r["password"] in credentials.read_text() and credentials.stat().st_mode & 0o077 == 0
    text = r["run"].text
    # each process connects as its own role (sql/018_roles.sql), with a password kept 0600 in the folder
    assert "bacpipes_edge" in r["site_users"], r["site_users"]
    assert all("password authentication failed" in v or "no password" in v
               for v in r["without_password"].values()), r["without_password"]
    roles = dict(line.split(" = ") for line in (folder / "db-roles.txt").read_text().splitlines()
                 if not line.startswith("#"))
    assert (folder / "db-roles.txt").stat().st_mode & 0o077 == 0
    users = {}
    for config in ("edge.toml", "app-site.toml", "app-central.toml", "flows.toml"):
        dsn = tomllib.loads((folder / config).read_text(encoding="utf-8"))["database"]["dsn"]
        params = conninfo_to_dict(dsn)
        users[config] = params["user"]
        assert params["password"] == roles[params["user"]] and params["password"] not in text
        assert (folder / config).stat().st_mode & 0o077 == 0
    assert users == {"edge.toml": "bacpipes_edge", "app-site.toml": "bacpipes_app",
                     "app-central.toml": "bacpipes_app", "flows.toml": "bacpipes_flows_runner"}
    assert f"{folder}/site.toml" in text and "stopped site database" in text
    for config in ("site.toml", "central.toml"):  # other commands work against the demo's settings
        status = subprocess.run([sys.executable, "-m", "bacpipes.cli", "authority", "show", "--config",
                                 str(folder / config)], capture_output=True, text=True, timeout=60)
        assert status.returncode == 3 and "database unavailable" in status.stderr  # stopped now
    # after it ended: nothing listening, no process of the demo left
    assert not demo_processes(folder)
    for port in (*r["ports"].values(), int(r["url"].rsplit(":", 1)[1])):
        assert not listening(port), port


def test_a_second_run_reuses_the_folder_and_ctrl_c_with_the_pipe_gone_stops_it(folder: Path,
                                                                               first_run: dict) -> None:
    """The second run is up in a fraction of the first's time (no backfill, no flows). Then `bacpipes demo |
    tee log` and Ctrl-C: tee dies, the demo gets SIGINT and every print fails (EPIPE); it still stops
    everything it started, its apps included."""
    run = Run(folder)
    run.wait_for(r"Ctrl-C stops everything", 180)
    up = time.monotonic() - run.started
    assert "reusing it" in run.text and "no backfill" in run.text and "no flows run" in run.text
    assert "backfill 10 days" not in run.text
    assert up < first_run["elapsed"] / 2, (up, first_run["elapsed"])
    during, ports = run.processes(), run.ports()
    assert len(ports) == 5 and all(listening(p) for p in ports), (ports, run.text)  # 2 DBs, broker, 2 apps
    assert run.proc.stdout is not None
    run.proc.stdout.close()
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(180) == 0, run.text
    assert not run.processes(), (run.processes(), during)
    assert not [p for p in ports if listening(p)], ports
    assert not (folder / "demo.pid").exists()  # its last cleanup ran too


def test_reset_starts_over_and_the_terminal_closing_stops_it(folder: Path, first_run: dict) -> None:
    """--reset starts from nothing; closing the terminal (SIGHUP) while its flows child and that child's
    Prefect server run stops them and every server, as Ctrl-C would."""
    run = Run(folder, "--reset", "--no-app")

    def flows_running() -> bool:
        found = " ".join(run.processes())
        return "bacpipes.cli.demo flows" in found and "prefect.server.api.server" in found

    run.wait_until(flows_running, 300, "the flows child and its Prefect server")
    during, ports = run.processes(), run.ports()
    assert all(listening(p) for p in ports), ports  # both databases and the broker are up
    run.proc.send_signal(signal.SIGHUP)
    run.finish()
    assert "--reset: deleted" in run.text and "first run" in run.text and "backfill 10 days" in run.text
    for name in ("site database", "central database", "broker"):
        assert f"stopped {name}" in run.text, run.text
    assert not run.processes(), (run.processes(), during)
    assert not [p for p in ports if listening(p)], ports
    assert first_run["password"] not in (folder / "credentials.txt").read_text()  # new credentials


def test_settings_files_take_any_folder_name(tmp_path: Path) -> None:
    """The settings files are written by a TOML library: a folder named with quotes, a backslash and a
    non-ASCII letter comes back as it is (string formatting broke on the first double quote)."""
    from bacpipes.cli.demo import PROCESS_CONFIGS, Demo, Options
    from bacpipes.settings import load_settings

    folder = tmp_path / "the \"demo\" folder, o'brien\\é"
    folder.mkdir()
    demo = Demo(Options(dir=folder))
    demo.state = {"ports": {"site_db": 55001, "central_db": 55002, "mqtt": 55003}}
    demo.db_passwords = {role: f"secret-{role}" for _, role in PROCESS_CONFIGS.values()}
    demo.write_configs()
    demo.linked = True
    demo.write_process_configs()
    for name in ("site.toml", "central.toml", *PROCESS_CONFIGS):
        settings = load_settings(folder / name)
        assert settings.backups.dir == str(folder / "backups"), name
        assert settings.alerts.state_path == str(folder / "var" / "alerts-state.json"), name
        assert settings.replication.certs_dir == str(folder / "certs"), name
    assert load_settings(folder / "site.toml").spool.path == str(folder / "var" / "spool.sqlite")
    dsn = conninfo_to_dict(load_settings(folder / "flows.toml").database.dsn)
    assert (dsn["user"], dsn["password"], dsn["port"]) == (
        "bacpipes_flows_runner", "secret-bacpipes_flows_runner", "55002")
    assert (folder / "flows.toml").stat().st_mode & 0o077 == 0


def test_building_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """--building / --weather, the folder's building, and the default: EnergyPlus's medium office in Tampa
    when pyenergyplus-lbnl is installed, else the RC model; names as shipped or by alias compare equal."""
    from bacpipes.cli import build_parser, demo
    from bacpipes.errors import UserError

    args = build_parser().parse_args(["demo", "--building", "energyplus:hospital", "--weather", "miami"])
    assert (args.building, args.weather) == ("energyplus:hospital", "miami")
    assert build_parser().parse_args(["demo"]).building is None  # the folder's, else the default

    rc = demo.BuildingChoice("rc")
    monkeypatch.setattr(demo, "energyplus_available", lambda: False)
    assert demo.choose_building(None, None, None) == rc  # the fallback
    assert (rc.site_id, rc.timezone) == ("macau-casino", "Asia/Macau")
    with pytest.raises(UserError, match="pyenergyplus"):
        demo.choose_building("energyplus:office_medium", None, None)
    with pytest.raises(UserError, match="--weather is for an EnergyPlus building"):
        demo.choose_building("rc", "tampa", None)
    with pytest.raises(UserError, match="'rc' or 'energyplus:<prototype>'"):
        demo.choose_building("trnsys", None, None)
    if importlib.util.find_spec("pyenergyplus") is None:
        return
    monkeypatch.setattr(demo, "energyplus_available", lambda: True)
    office = demo.choose_building(None, None, None)
    assert office == demo.BuildingChoice("energyplus:ASHRAE901_OfficeMedium_STD2019_Denver",
                                         "USA_FL_Tampa.Intl.AP.722110_TMY3")
    assert demo.choose_building("energyplus:office_medium", "tampa", None) == office  # an alias, a part
    assert demo.choose_building("rc", None, None) == rc  # asked for
    # the site stands where its weather is (EnergyPlus keeps that place's local standard time)
    assert (office.site_id, office.timezone) == ("tampa-office-medium", "America/New_York")
    boulder = demo.choose_building("energyplus:hospital", "boulder", None)
    assert (boulder.site_id, boulder.timezone) == ("boulder-hospital", "America/Denver")
    # a folder keeps its building: a bare run reuses it, the same one by another name is accepted
    assert demo.choose_building(None, None, rc.as_state()) == rc
    assert demo.choose_building(None, None, boulder.as_state()) == boulder
    assert demo.choose_building("energyplus:Hospital", "USA_CO_Boulder", boulder.as_state()) == boulder
    for building, weather, held in (("energyplus:office_medium", None, rc), ("rc", None, office),
                                    (None, "miami", office), ("energyplus:hospital", None, office)):
        with pytest.raises(UserError, match="--reset"):
            demo.choose_building(building, weather, held.as_state())


def test_a_reused_folder_refuses_another_building(tmp_path: Path) -> None:
    """A folder made on one building refuses another (before it starts anything), saying to use --reset;
    a folder from before the choice holds the RC model."""
    from bacpipes.cli.demo import Demo, Options
    from bacpipes.errors import UserError

    folder = tmp_path / "demo"
    folder.mkdir()
    # no "building": made before there was a choice
    state = {"created": "2025-01-01T00:00:00", "backfill": {"days": 10, "rows": 1},
             "ports": {"site_db": 55001, "central_db": 55002, "mqtt": 55003}}
    (folder / "demo.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"holds the demo of the RC model.*--reset"):
        Demo(Options(dir=folder, building="energyplus:office_medium", app=False)).run()
    assert json.loads((folder / "demo.json").read_text()) == state  # untouched
    assert not (folder / "demo.pid").exists() and not (folder / "site-db").exists()
    with pytest.raises(UserError, match="--weather is for an EnergyPlus building"):
        Demo(Options(dir=folder, building="rc", weather="tampa", app=False)).run()
