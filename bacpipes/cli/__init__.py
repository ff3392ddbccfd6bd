"""The `bacpipes` command. Subcommands import their modules lazily so `--help` stays fast."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import MutableMapping, Sequence
from datetime import datetime
from pathlib import Path

import psycopg
from pydantic import ValidationError

from bacpipes.errors import UserError
from bacpipes.settings import Settings, load_settings

WRITE_LIMIT_ARGS = {
    "min_value": "--min", "max_value": "--max", "ml_min_value": "--ml-min", "ml_max_value": "--ml-max",
    "ml_max_step": "--ml-step",
}


def _db_migrate(args: argparse.Namespace) -> int:
    from bacpipes.db import prepare_database

    setup = prepare_database(load_settings(args.config).database.dsn)
    if setup.created:
        print("created database")
    applied = setup.applied
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    if setup.partitions:
        print(f"created {len(setup.partitions)} daily partition(s) ahead")
    return 0


def _db_roles(args: argparse.Namespace) -> int:
    """The processes' login roles (sql/018_roles.sql has their groups). Passwords from
    $BACPIPES_DB_PASSWORD_<ROLE>, else generated for a new role and written 0600 next to the config."""
    from bacpipes.db import LOGIN_ROLES, ensure_login_roles, password_variable

    given = {r: os.environ[password_variable(r)] for r in LOGIN_ROLES if os.environ.get(password_variable(r))}
    set_now = ensure_login_roles(load_settings(args.config).database.dsn, given)
    generated = {r: p for r, p in set_now.items() if r not in given}
    if generated:
        out = Path(args.config).resolve().parent / "db-roles.env"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            os.fchmod(f.fileno(), 0o600)
            f.writelines(f"{password_variable(r)}={p}\n" for r, p in generated.items())
        print(f"generated passwords written to {out} (0600): put each in its service's DSN")
    for role, groups in LOGIN_ROLES.items():
        how = "password set" if role in set_now else "password unchanged"
        print(f"{role}: member of {', '.join(groups)}; {how}")
    return 0


def _db_retention(args: argparse.Namespace) -> int:
    from bacpipes.db import connect
    from bacpipes.partitions import apply_retention

    settings = load_settings(args.config)
    with connect(settings.database.dsn, autocommit=True) as conn:
        days = settings.database.retention_days if args.days is None else args.days
        report = apply_retention(conn, days=days)
    print(report.summary())
    for name, rows in report.dropped.items():
        print(f"  dropped {name} ({rows} rows)")
    return 0


def _db_backup(args: argparse.Namespace) -> int:
    """What the daily `backup` flow does, for a box without Prefect (a site on bacpipes[edge])."""
    from bacpipes.offsite import upload_backup
    from central.backups import backup

    settings = load_settings(args.config)
    made = backup(settings)
    print(f"dumped {made.path} ({made.size} bytes); {len(made.deleted)} old dump(s) deleted")
    if settings.offsite.enabled and not args.no_offsite:
        done = upload_backup(settings.offsite, settings.site.id, made.path)
        print(f"off-site copy {done.url} checked (SHA-256 {done.sha256}); {len(done.deleted)} old "
              "off-site copies deleted")
    return 0


def _offsite(args: argparse.Namespace) -> int:
    from bacpipes.offsite import Store

    settings = load_settings(args.config)
    store = Store(settings.offsite, args.site or settings.site.id)
    if args.offsite_command == "list":
        copies = store.copies()
        for copy in copies:
            print(f"{copy.modified:%Y-%m-%d %H:%M:%S %Z}  {copy.size:>12}  {copy.name}")
        print(f"{len(copies)} copies in {store.url()}")
    elif args.offsite_command == "upload":
        for path in args.files:
            done = store.upload(Path(path))
            print(f"{done.url}: {done.size} bytes, checked (SHA-256 {done.sha256})")
    elif args.pitr:
        from bacpipes.pg_binaries import give_to_server_user

        files = store.fetch_folder(Path(args.into))
        give_to_server_user(Path(args.into))  # pgBackRest reads it as the server's user
        print(f"{len(files)} files of the pgBackRest repository in {args.into}, checked: set [backups] "
              "pitr_repo to it for `bacpipes central restore`")
    else:
        if not args.name:
            raise UserError("name the copy to fetch (bacpipes offsite list shows them), or --pitr")
        path = store.fetch(args.name, Path(args.into))
        print(f"{path}: checked; restore it with bacpipes db restore --dump {path} --into DSN")
    return 0


def _db_restore(args: argparse.Namespace) -> int:
    from central.backups import restore

    target = args.into or load_settings(args.config).database.dsn
    restore(args.dump, target, no_owner=args.no_owner)
    print(f"restored {args.dump}")
    return 0


def _sim(args: argparse.Namespace) -> int:
    from sim.server import run

    run(
        devices=args.devices,
        points=args.points,
        address_base=args.address_base,
        seed=args.seed,
        speed=args.speed,
        port=args.port,
        bbmd=args.bbmd,
        routed=args.routed,
        building=args.building,
        weather=args.weather,
        timesteps_per_hour=args.steps_per_hour or 60,
        start=args.start,
        days=args.run_days,
    )
    return 0


def _sim_backfill(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.building == "rc":
        from sim.backfill import backfill

        report = backfill(settings, days=args.days, seed=args.seed, devices=args.devices,
                          interval_s=args.interval)
    else:
        from sim.energyplus.backfill import backfill as backfill_energyplus

        report = backfill_energyplus(settings, args.days, building=_energyplus_model(args.building),
                                     weather=args.weather, timesteps_per_hour=args.steps_per_hour,
                                     interval_s=args.interval)
    print(report.summary())
    for note in report.notes:
        print(f"  note: {note}")
    return 0


def _energyplus_model(building: str) -> str:
    """`energyplus:<prototype>` -> the prototype's name; `rc` is handled by the caller."""
    kind, _, model = building.partition(":")
    if kind != "energyplus" or not model:
        raise UserError(f"--building must be 'rc' or 'energyplus:<prototype>', not {building!r}")
    return model


def _flows_run(args: argparse.Namespace) -> int:
    import json

    from flows.registry import FLOWS, WINDOWED

    if args.name not in FLOWS:
        raise UserError(f"no flow {args.name!r}: choose one of {', '.join(FLOWS)}")
    windowed = args.days and args.name in WINDOWED
    result = FLOWS[args.name](args.config, days=args.days) if windowed else FLOWS[args.name](args.config)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _flows_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_all

    serve_all(args.config, central=args.central)
    return 0


def _edge_discover(args: argparse.Namespace) -> int:
    from edge.bacnet import BacnetClient
    from edge.discovery import discover

    settings = load_settings(args.config)

    async def main() -> int:
        client = BacnetClient.open(settings.bacnet, settings.discovery.bbmd)
        try:
            report = await discover(client, settings)
        finally:
            client.close()
        for dev in report.devices:
            print(
                f"device {dev.peer.device_id:>8} {dev.peer.address:<22} {dev.name:<20} "
                f"{len(dev.points):>5} points  max_apdu={dev.peer.max_apdu} {dev.peer.segmentation}"
            )
        for device_id, error in report.errors.items():
            print(f"device {device_id:>8} ERROR {error}", file=sys.stderr)
        if report.history:
            h = report.history
            print(f"trend-log history: {h.added} readings imported, {len(h.failed)} logs failed")
        print(
            f"{len(report.devices)} devices, {report.point_count} points "
            f"({report.new_points} new, {report.missing_points} newly missing)"
        )
        return 0 if report.devices else 1

    return asyncio.run(main())


def _edge_history(args: argparse.Namespace) -> int:
    """Import the history the devices' trend logs hold (resumes after the last import)."""
    from edge.bacnet import BacnetClient
    from edge.trendlog import history_window, import_history

    settings = load_settings(args.config)
    since = history_window(args.since, settings.site.tz)

    async def main() -> int:
        client = BacnetClient.open(settings.bacnet, settings.discovery.bbmd)
        try:
            report = await import_history(client, settings, device=args.device, since=since)
        finally:
            client.close()
        for item in report.logs:
            error = f"  ERROR {item.error}" if item.error else ""
            print(f"device {item.device_id:>8} trend-log {item.log_instance:<5} point {item.point_id or '-'}"
                  f"  read {item.read}, added {item.added}{error}")
        for device_id, error in report.device_errors.items():
            print(f"device {device_id:>8} ERROR {error}", file=sys.stderr)
        print(f"{len(report.logs)} trend logs, {report.added} readings added, {len(report.failed)} failed")
        return 1 if report.failed or report.device_errors else 0

    return asyncio.run(main())


def _edge_run(args: argparse.Namespace) -> int:
    from edge.agent import run_agent

    run_agent(load_settings(args.config), discover_first=args.discover)
    return 0


def _edge_ingest(args: argparse.Namespace) -> int:
    from edge.ingest import run_ingest

    run_ingest(load_settings(args.config))
    return 0


def _points_list(args: argparse.Namespace) -> int:
    from bacpipes.points import list_points

    for row in list_points(load_settings(args.config), device=args.device, match=args.match):
        print("\t".join("" if v is None else str(v) for v in row))
    return 0


def _points_set(args: argparse.Namespace) -> int:
    from bacpipes.points import update_points

    count = update_points(
        load_settings(args.config),
        device=args.device,
        match=args.match,
        object_type=args.type,
        publish=args.publish,
        interval_s=args.interval,
        qos=args.qos,
        tags=args.tag or [],
        limits={c: getattr(args, c) for c in WRITE_LIMIT_ARGS if getattr(args, c) is not None},
        acquisition=args.acquisition,
        cov_confirmed=args.cov_confirmed,
    )
    print(f"updated {count} point(s)")
    return 0


def _write(args: argparse.Namespace) -> int:
    """Queue a command for the site's agent and wait for its outcome (the agent does the writing)."""
    import getpass
    from datetime import UTC, timedelta

    from bacpipes.commands import TERMINAL, Command, command_status, insert_command
    from bacpipes.db import connect
    from bacpipes.waiting import poll_until

    if args.release == (args.value is not None):
        raise UserError("give either --value or --release")
    settings = load_settings(args.config)
    command = Command(
        settings.site.id, args.point, args.value, priority=args.priority, release=args.release,
        source="cli", created_by=f"cli:{getpass.getuser()}", reason=args.reason,
        not_after=datetime.now(UTC) + timedelta(seconds=args.wait),  # never run later than we wait
    )
    with connect(settings.database.dsn) as conn:
        command_id = insert_command(conn, command)

        def finished() -> dict | None:
            status = command_status(conn, command_id)
            return status if status is not None and status["status"] in TERMINAL else None

        try:
            status = poll_until(finished, args.wait, interval=0.1, what=f"command {command_id}")
        except TimeoutError:
            print(f"command {command_id}: no agent ran it within {args.wait:g} s; it expires unrun")
            return 1
    if status["status"] == "completed":
        print(f"command {command_id}: completed; present value now {status['value_read']}")
        return 0
    print(f"command {command_id}: {status['status']}: {status['error_message']}")
    return 1


def _authority(args: argparse.Namespace) -> int:
    import getpass
    from datetime import timedelta

    from bacpipes.commands import current_authority, grant_remote, revoke_remote
    from bacpipes.db import connect

    settings = load_settings(args.config)
    site, who = settings.site.id, f"cli:{getpass.getuser()}"
    with connect(settings.database.dsn) as conn:
        if args.action == "grant":
            grant_remote(conn, site, timedelta(minutes=args.minutes), who, args.reason)
        elif args.action == "revoke":
            revoke_remote(conn, site, who, args.reason)
        mode, until = current_authority(conn, site)
    until_text = f" until {until:%Y-%m-%d %H:%M:%S %Z}" if until else ""
    print(f"site {site}: control authority {mode}{until_text}")
    return 0


def _central_init(args: argparse.Namespace) -> int:
    from central.setup import init_central

    setup, retention, capacity = init_central(load_settings(args.config), args.sites)
    print(f"applied {len(setup.applied)} migration(s); {retention.summary()}")
    for line in capacity:
        print(line)
    return 0


def _central_backup(args: argparse.Namespace) -> int:
    from central.pitr import backup, stanza_from_settings

    settings = load_settings(args.config)
    stanza = stanza_from_settings(settings.backups, settings.database.dsn)
    done = backup(stanza, args.kind)
    print(f"{done.kind} backup {done.label}: database {done.size} bytes, {done.repo_size} bytes added to the "
          f"repository, {done.started:%Y-%m-%d %H:%M:%S} to {done.stopped:%H:%M:%S} UTC")
    if settings.offsite.enabled:
        from bacpipes.offsite import sync_repository

        synced = sync_repository(settings.offsite, settings.site.id, stanza.repo,
                                 settings.backups.pitr_retention_days)
        print(f"repository off-site in {synced.url}: {len(synced.uploaded)} files uploaded and checked, "
              f"{synced.unchanged} already there, {len(synced.deleted)} expired ones deleted")
    return 0


def _central_restore(args: argparse.Namespace) -> int:
    """pgBackRest restores into <into>/data; the server started there replays WAL up to --to and promotes
    itself. It listens on loopback only: check it, then point central's service at that data directory."""
    from bacpipes.cli.servers import PostgresCluster
    from central.pitr import restore, stanza_from_settings, wait_promoted

    try:
        to = datetime.fromisoformat(args.to)
    except ValueError:
        raise UserError(f"--to {args.to!r} is not an ISO time, e.g. 2026-11-29T05:20:00+00:00") from None
    settings = load_settings(args.config)
    root = Path(args.into).absolute()
    restore(stanza_from_settings(settings.backups, settings.database.dsn), to, root / "data")
    cluster = PostgresCluster(root, port=args.port).start(timeout=args.timeout)
    wait_promoted(cluster.dsn(), args.timeout)
    print(f"restored to {to.isoformat()} in {cluster.data}, promoted; running on {cluster.url()}"
          f" (log {cluster.log})")
    return 0


def _central_recover(args: argparse.Namespace) -> int:
    """After `central restore`: every linked site resynced (bacpipes/recovery.py); 1 when one failed."""
    from bacpipes.db import redact_error
    from bacpipes.recovery import recover

    try:
        since = datetime.fromisoformat(args.since)
    except ValueError:
        raise UserError(f"--since {args.since!r} is not an ISO time, e.g. 2026-11-29T05:20:00+00:00"
                        ) from None
    paths = [Path(p) for p in args.site_config]
    if args.sites_dir:
        paths += sorted(Path(args.sites_dir).glob("*.toml"))
    if not paths:
        raise UserError("give each linked site's config: --site-config FILE (repeated) or --sites-dir DIR")
    report = recover(load_settings(args.config), [load_settings(p) for p in paths], since, args.timeout)
    for step in report.central:
        print(f"central: {step}")
    for site_id, steps in report.sites.items():
        for step in steps:
            print(f"{site_id}: {step}")
    for site_id, why in report.failed.items():
        print(f"{site_id}: FAILED: {redact_error(why)} (run again once it is reachable)")
    print(f"{len(report.sites) - len(report.failed)} of {len(report.sites)} sites recovered")
    return 1 if report.failed else 0


def _central_status(args: argparse.Namespace) -> int:
    from bacpipes.capacity import room_line, servers, sync_states
    from bacpipes.db import connect
    from bacpipes.replication import central_status

    settings = load_settings(args.config)
    with connect(settings.database.dsn) as conn:
        links = central_status(conn)
    syncs = []
    outbox = settings.central.outbox_dsn is not None
    for server, dsn in servers(settings):  # the outbox's own subscription to central can be stuck too
        with connect(dsn) as conn:
            syncs += [s.stuck(settings.replication.lag_alert_s) for s in sync_states(conn)]
            print(room_line(conn, server, outbox, len(links)))
    if not links:
        print("no sites linked")
    worst = 1 if any(syncs) else 0
    for stuck in filter(None, syncs):
        print(f"ALERT: {stuck}")
    for link in links:
        problems = link.problems(settings.replication.lag_alert_s)
        worst = max(worst, 1 if problems else 0)
        lag = "-" if link.lag_s is None else f"{link.lag_s:.1f} s"
        print(f"{link.site_id}: lag {lag}, {link.lag_bytes or 0} bytes, slot {link.slot_wal_status or '?'}, "
              f"last reading {link.last_reading or '-'}"
              + (f"  ALERT: {'; '.join(problems)}" if problems else "  ok"))
    return worst


def _site_link(args: argparse.Namespace) -> int:
    from bacpipes import replication

    site, central = load_settings(args.site_config), load_settings(args.central_config)
    action = {"link": replication.link, "unlink": replication.unlink, "resync": replication.resync}[
        args.site_command
    ]
    for step in action(site, central):
        print(step)
    return 0


def _site_rebuild(args: argparse.Namespace) -> int:
    from bacpipes.rebuild import rebuild

    done = rebuild(load_settings(args.site_config), load_settings(args.central_config), args.timeout)
    for line in done.lines():
        print(line)
    return 0


def _site_status(args: argparse.Namespace) -> int:
    from bacpipes.db import connect
    from bacpipes.replication import site_slots

    with connect(load_settings(args.config).database.dsn) as conn:
        slots = site_slots(conn)
    for slot in slots:
        print(f"slot {slot['slot_name']}: {slot['wal_status']}, active={slot['active']}, "
              f"{slot['lag_bytes']} bytes behind, safe_wal_size={slot['safe_wal_size']}")
    if not slots:
        print("no replication slots: not linked")
    return 1 if any(s["wal_status"] == "lost" for s in slots) else 0


def _certs(args: argparse.Namespace) -> int:
    from bacpipes import certs
    from bacpipes.replication import CENTRAL_ROLE, OUTBOX_ROLE, site_role

    out = Path(args.out)
    certs.ensure_ca(out)
    certs.issue_server(out, "central", args.central_host)  # central's outbox, on the same host, too
    for role in (CENTRAL_ROLE, OUTBOX_ROLE):
        certs.issue_client(out, role)
    for site_id, host in (s.split("=", 1) for s in args.site):
        certs.issue_server(out, f"site-{site_id}", [host])
        certs.issue_client(out, site_role(site_id))
    print(f"certificates in {out}: copy ca.crt, the server's own pair and the client pair its")
    print("subscription uses to each host; postgresql.conf and pg_hba.conf lines:")
    print(certs.deploy_hba(), end="")  # = deploy/pg_hba.conf; the replication roles log in by certificate
    for key, value in certs.server_settings(out, "central").items():
        print(f"{key} = '{value}'")
    return 0


def _ui(args: argparse.Namespace) -> int:
    """Serve the Streamlit app; it reads the same settings file (passed on as $BACPIPES_CONFIG)."""
    settings = load_settings(args.config)
    env = dict(os.environ)
    if args.config:
        env["BACPIPES_CONFIG"] = str(Path(args.config).resolve())
    command = streamlit_command(args, settings)
    os.execvpe(command[0], command, env)  # Streamlit takes over this process (signals included)


def streamlit_command(args: argparse.Namespace, settings: Settings) -> list[str]:
    """`streamlit run` for the app: headless, and its usage statistics off (a site's or central's app never
    reports to anyone but its operators), HTTPS with a certificate and key."""
    app = Path(__file__).resolve().parent.parent.parent / "streamlit_app" / "app.py"
    if not app.exists():  # installed as a wheel
        import streamlit_app

        app = Path(streamlit_app.__file__).parent / "app.py"
    host = args.host or settings.ui.host
    command = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", host,
        "--server.port", str(args.port or settings.ui.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", "none", "--client.toolbarMode", "viewer",
    ]
    cert, key = args.cert or settings.ui.cert_file, args.key or settings.ui.key_file
    if bool(cert) != bool(key):
        raise UserError("HTTPS needs both a certificate and its key (--cert and --key, or [ui] cert_file "
                        "and key_file)")
    if cert and key:
        for path in (cert, key):
            if not Path(path).is_file():
                raise UserError(f"no such file: {path}")
        command += ["--server.sslCertFile", str(Path(cert).resolve()),
                    "--server.sslKeyFile", str(Path(key).resolve())]
    elif host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: serving plain HTTP on {host}: passwords cross the network in clear unless a TLS "
              "proxy is in front; use --cert/--key (bacpipes certs makes a pair)", file=sys.stderr)
    return command


def _users(args: argparse.Namespace) -> int:
    import getpass

    from bacpipes.db import connect
    from bacpipes.users import add_user, disable, list_users, unlock

    settings = load_settings(args.config)
    if args.users_command == "unlock":
        if not (args.name or args.address):
            raise UserError("name a user or an --address to unlock")
        with connect(settings.database.dsn) as conn:
            lifted = unlock(conn, username=args.name, address=args.address)
        print(f"unlocked {' and '.join(filter(None, [args.name, args.address]))}"
              f" ({lifted} lock(s) were active); earlier failures no longer count")
        return 0
    if args.users_command == "disable":
        with connect(settings.database.dsn) as conn:
            if not disable(conn, args.name):
                raise UserError(f"no user {args.name!r}")
        print(f"user {args.name} disabled (an open session loses access at its next interaction)")
        return 0
    if args.users_command == "list":
        with connect(settings.database.dsn) as conn:
            for name, role, disabled_at, locked_until in list_users(conn):
                state = (f"disabled since {disabled_at:%Y-%m-%d %H:%M}" if disabled_at else
                         f"locked until {locked_until:%Y-%m-%d %H:%M}" if locked_until else "active")
                print(f"{name}\t{role}\t{state}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise UserError("the passwords differ")
    with connect(settings.database.dsn) as conn:
        add_user(conn, args.name, password, args.role)
        database = conn.info.dbname  # never the DSN: it may hold a password
    print(f"user {args.name} ({args.role}) saved in database {database}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bacpipes.cli.demo import run_demo

    return run_demo(devices=args.devices, seconds=args.seconds, interval_s=args.interval, directory=args.dir,
                    reset=args.reset, days=args.days, speed=args.speed, app=not args.no_app,
                    readings=args.readings, status_every=args.status_every, verbose=args.verbose,
                    building=args.building, weather=args.weather)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bacpipes", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="TOML settings file (default: $BACPIPES_CONFIG or embedded)")
        return p

    demo = sub.add_parser("demo", help="the whole platform on this machine, in one folder (Ctrl-C stops it)")
    demo.add_argument("--dir", default="var/demo", help="its folder: databases, broker, settings, logs")
    demo.add_argument("--reset", action="store_true", help="delete the folder first and start over")
    demo.add_argument("--days", type=int, default=14, help="simulated history on the first run (>= 10)")
    demo.add_argument("--building", default=None,
                      help="rc (the fast RC model) or energyplus:<prototype>, e.g. energyplus:office_medium "
                           "(default: the folder's; on a new folder EnergyPlus's medium office when "
                           "pyenergyplus-lbnl is installed, else rc)")
    demo.add_argument("--weather", default=None,
                      help="EnergyPlus: a shipped TMY3 file's name or part of it (default tampa)")
    demo.add_argument("--devices", type=int, default=3, help="controllers of the RC building")
    demo.add_argument("--seconds", type=float, default=None, help="stop this long after it is up")
    demo.add_argument("--interval", type=float, default=5.0, help="polling interval for the demo")
    demo.add_argument("--speed", type=float, default=1.0, help="building seconds per wall second")
    demo.add_argument("--no-app", action="store_true", help="do not serve the web app")
    demo.add_argument("--readings", action="store_true", help="print every reading as it arrives on MQTT")
    demo.add_argument("--status-every", type=float, default=15.0, help="seconds between status lines")
    demo.set_defaults(func=_demo)

    db = sub.add_parser("db").add_subparsers(dest="db_command", required=True)
    with_config(db.add_parser("migrate", help="apply pending SQL migrations")).set_defaults(func=_db_migrate)
    with_config(db.add_parser("roles", help="create the login roles of the processes")).set_defaults(
        func=_db_roles)
    retention = with_config(db.add_parser("retention", help="drop expired daily partitions, create ahead"))
    retention.add_argument("--days", type=int, help="keep this many days (default: database.retention_days)")
    retention.set_defaults(func=_db_retention)
    db_backup = with_config(db.add_parser(
        "backup", help="a pg_dump into [backups] dir, old dumps pruned; off-site too when [offsite] is on"))
    db_backup.add_argument("--no-offsite", action="store_true", help="this once, no off-site copy")
    db_backup.set_defaults(func=_db_backup)
    restore = with_config(db.add_parser("restore", help="restore a backup dump into a new, empty database"))
    restore.add_argument("--dump", required=True, help="the .dump file (pg_dump -Fc)")
    restore.add_argument("--into", help="target DSN, created if missing, must be empty (default: [database])")
    restore.add_argument("--no-owner", action="store_true", help="for a server without the dump's roles")
    restore.set_defaults(func=_db_restore)

    copies = sub.add_parser("offsite", help="the backups' copies in the S3-compatible store ([offsite])")
    offsite = copies.add_subparsers(dest="offsite_command", required=True)
    olist = with_config(offsite.add_parser("list", help="this site's off-site dumps"))
    oupload = with_config(offsite.add_parser("upload", help="upload dumps (or any file) and check them"))
    oupload.add_argument("files", nargs="+")
    ofetch = with_config(offsite.add_parser("fetch", help="download a copy, checked, for a restore"))
    ofetch.add_argument("name", nargs="?", help="a dump's name, as listed")
    ofetch.add_argument("--pitr", action="store_true", help="central's pgBackRest repository instead")
    ofetch.add_argument("--into", required=True, help="a folder (with --pitr: a new or empty one)")
    for p in (olist, oupload, ofetch):
        p.add_argument("--site", help="another site's copies (default: [site] id)")
        p.set_defaults(func=_offsite)

    sim = sub.add_parser("sim", help="serve the virtual building over BACnet/IP")
    sim.add_argument("--devices", type=int, default=3)
    sim.add_argument("--points", type=int, default=0, help="pad each device to this many objects")
    sim.add_argument("--address-base", default="127.0.0.10")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--speed", type=float, default=1.0, help="building seconds per wall second")
    sim.add_argument("--port", type=int, default=47808)
    sim.add_argument("--bbmd", help="also serve a BBMD at this loopback address, e.g. 127.0.0.9")
    sim.add_argument("--routed", type=int, default=0,
                     help="this many more devices behind a BACnet/IP router (next address), at 2:1, 2:2, ..")
    sim.add_argument("--building", default="rc",
                     help="rc (the fast RC model) or energyplus:<prototype> (a DOE prototype shipped with "
                          "pyenergyplus-lbnl, e.g. energyplus:ASHRAE901_OfficeMedium_STD2019_Denver)")
    sim.add_argument("--weather", help="EnergyPlus: a shipped TMY3 file's name or part of it (default Tampa)")
    sim.add_argument("--steps-per-hour", type=int, help="EnergyPlus: zone timesteps per hour (default 60)")
    sim.add_argument("--start", type=datetime.fromisoformat,
                     help="EnergyPlus: building time to start at, local standard time (default: now)")
    sim.add_argument("--run-days", type=int, default=366, help="EnergyPlus: days the simulation runs for")
    sim.set_defaults(func=_sim)
    backfill = with_config(sim.add_subparsers(dest="sim_command").add_parser(
        "backfill", help="write N days of simulated history into the database (marked simulated)"))
    backfill.add_argument("--days", type=int, required=True)
    backfill.add_argument("--seed", type=int, default=0)
    backfill.add_argument("--devices", type=int, default=3)
    backfill.add_argument("--interval", type=float, help="seconds between readings (default: polling)")
    backfill.add_argument("--building", default="rc",
                          help="rc (the fast RC model) or energyplus:<prototype>, e.g. "
                               "energyplus:ASHRAE901_OfficeMedium_STD2019_Denver")
    backfill.add_argument("--weather", default="tampa",
                          help="EnergyPlus only: a shipped TMY3 file's name (or part of it) or an .epw path")
    backfill.add_argument("--steps-per-hour", type=int, help="EnergyPlus only: zone timesteps per hour")
    backfill.set_defaults(func=_sim_backfill)

    flows = sub.add_parser("flows").add_subparsers(dest="flows_command", required=True)
    run_flow = with_config(flows.add_parser("run", help="run one flow now"))
    run_flow.add_argument("name", help="baseline, train, ab-plan, ab, retention, alerts or backup"
                          " (flows.registry)")
    run_flow.add_argument("--days", type=int, help="history window (default: the flow's)")
    run_flow.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="Prefect's progress and every HTTP request to its server, too")
    run_flow.set_defaults(func=_flows_run, quiet=True)  # its output is the flow's result (JSON)
    serve_flows = with_config(flows.add_parser("serve", help="run every flow on its schedule"))
    serve_flows.add_argument("--central", action="store_true", help="retention with central's days")
    serve_flows.set_defaults(func=_flows_serve)

    edge = sub.add_parser("edge").add_subparsers(dest="edge_command", required=True)
    with_config(edge.add_parser("discover", help="find devices and points")).set_defaults(func=_edge_discover)
    run = with_config(edge.add_parser("run", help="poll and publish until stopped"))
    run.add_argument("--discover", action="store_true", help="rediscover before polling")
    run.set_defaults(func=_edge_run)
    history = with_config(edge.add_parser("history", help="import the devices' trend-log history now"))
    history.add_argument("--device", type=int, help="only this device instance")
    history.add_argument("--since", help="skip older records: ISO date/time (site time) or a span, e.g. 2d")
    history.set_defaults(func=_edge_history)
    ingest = with_config(edge.add_parser("ingest", help="MQTT readings into PostgreSQL until stopped"))
    ingest.set_defaults(func=_edge_ingest)

    points = edge.add_parser("points").add_subparsers(dest="points_command", required=True)
    plist = with_config(points.add_parser("list"))
    pset = with_config(points.add_parser("set", help="bulk edit: publish, interval, qos, tags"))
    for p in (plist, pset):
        p.add_argument("--device", type=int)
        p.add_argument("--match", help="glob on object name, e.g. 'AHU1-*'")
    plist.set_defaults(func=_points_list)
    pset.add_argument("--type", help="BACnet object type, e.g. analog-input")
    pset.add_argument("--publish", choices=["on", "off"])
    pset.add_argument("--interval", type=float)
    pset.add_argument("--qos", type=int, choices=[0, 1, 2])
    pset.add_argument("--acquisition", choices=["poll", "cov"], help="cov: change of value, polled to check")
    pset.add_argument("--cov-confirmed", choices=["on", "off", "default"], help="confirmed COV notifications")
    pset.add_argument("--tag", action="append", help="key=value (empty value removes the tag)")
    for column, flag in WRITE_LIMIT_ARGS.items():
        pset.add_argument(flag, dest=column, metavar="N|none", help=f"write limit {column}")
    pset.set_defaults(func=_points_set)

    write = with_config(sub.add_parser("write", help="write or release a point through the site's agent"))
    write.add_argument("--point", type=int, required=True, help="point id")
    write.add_argument("--value", type=float)
    write.add_argument("--priority", type=int, default=8, help="BACnet priority 1-16 (default 8)")
    write.add_argument("--release", action="store_true", help="relinquish the priority instead")
    write.add_argument("--reason")
    write.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the agent")
    write.set_defaults(func=_write)

    authority = with_config(sub.add_parser("authority", help="who may write: the site, or remote too"))
    authority.add_argument("action", choices=["show", "grant", "revoke"])
    authority.add_argument("--minutes", type=float, default=60.0, help="length of a remote grant")
    authority.add_argument("--reason")
    authority.set_defaults(func=_authority)

    ui = with_config(sub.add_parser("ui", help="serve the web app (Streamlit) for a site or central"))
    ui.add_argument("--host", help="address to listen on (default: [ui] host, 127.0.0.1)")
    ui.add_argument("--port", type=int, help="port (default: [ui] port, 8501)")
    ui.add_argument("--cert", help="HTTPS: the server certificate, PEM (default: [ui] cert_file)")
    ui.add_argument("--key", help="HTTPS: its private key, PEM (default: [ui] key_file)")
    ui.set_defaults(func=_ui)

    users = sub.add_parser("users", help="app users: operators may write and deploy, viewers only read")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = with_config(users_sub.add_parser("add", help="create a user, or set a new password and role"))
    add.add_argument("name")
    add.add_argument("--role", choices=["viewer", "operator"], required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(func=_users)
    unlock = with_config(users_sub.add_parser("unlock", help="lift a login lock on a user or an address"))
    unlock.add_argument("name", nargs="?")
    unlock.add_argument("--address", help="a client address locked after failures ('local' = loopback)")
    unlock.set_defaults(func=_users)
    disable = with_config(users_sub.add_parser("disable", help="take a user's access away (users add "
                                                               "with a new password enables it again)"))
    disable.add_argument("name")
    disable.set_defaults(func=_users)
    with_config(users_sub.add_parser("list", help="users, roles, disabled or locked")).set_defaults(
        func=_users)

    central = sub.add_parser("central").add_subparsers(dest="central_command", required=True)
    init = with_config(central.add_parser("init", help="prepare the central database"))
    init.add_argument("--sites", type=int, help="the sites to plan for: raises the replication settings that "
                      "grow with them (a restart applies them); without, they are only checked")
    init.set_defaults(func=_central_init)
    with_config(central.add_parser("status", help="replication lag and health per site")).set_defaults(
        func=_central_status
    )
    pitr_backup = with_config(central.add_parser(
        "backup", help="a pgBackRest backup of central (point-in-time recovery; [backups] pitr_*)"))
    kinds = pitr_backup.add_mutually_exclusive_group()
    kinds.add_argument("--full", dest="kind", action="store_const", const="full", help="a full backup")
    kinds.add_argument("--incr", dest="kind", action="store_const", const="incr",
                       help="only the files changed since the last backup (the default; full if none yet)")
    pitr_backup.set_defaults(func=_central_backup, kind="incr")
    pitr_restore = with_config(central.add_parser("restore", help="central as it was at a moment, restored "
                                                                  "from pgBackRest into a new folder"))
    recover = with_config(central.add_parser(
        "recover", help="after a restore: every linked site resynced, no gap and no duplicate (re-runnable)"))
    recover.add_argument("--since", required=True, help="the time central was restored to (its --to), or "
                         "earlier: each site's readings from then that central lacks are copied")
    recover.add_argument("--site-config", action="append", default=[], metavar="FILE",
                         help="a linked site's settings (repeat for each site)")
    recover.add_argument("--sites-dir", help="a folder of site settings files (*.toml), one per site")
    recover.add_argument("--timeout", type=float, default=300.0,
                         help="seconds to wait for each site's subscriptions to be in sync")
    recover.set_defaults(func=_central_recover)
    pitr_restore.add_argument("--to", required=True, help="the moment, ISO 8601 with a timezone")
    pitr_restore.add_argument("--into", required=True,
                              help="a new folder: the data directory goes in <into>/data")
    pitr_restore.add_argument("--port", type=int,
                              help="the restored server's port on loopback (default: a free one)")
    pitr_restore.add_argument("--timeout", type=float, default=3600.0,
                              help="seconds to wait for the WAL replay")
    pitr_restore.set_defaults(func=_central_restore)

    site = sub.add_parser("site").add_subparsers(dest="site_command", required=True)
    for name, text in (("link", "connect a site and central both ways (safe to re-run)"),
                       ("unlink", "undo link; central keeps the history it has"),
                       ("resync", "after a lost slot: reconnect and backfill the gap, no full copy")):
        p = site.add_parser(name, help=text)
        p.add_argument("--site-config", required=True)
        p.add_argument("--central-config", required=True)
        p.set_defaults(func=_site_link)
    rebuild = site.add_parser("rebuild", help="a lost site's database again, from what central holds: "
                              "configuration, users, commands, deployments, history; then linked again")
    rebuild.add_argument("--from-central", action="store_true", required=True,
                         help="where from (central, the one source so far: named so a reader knows)")
    rebuild.add_argument("--site-config", required=True, help="the site's settings; [database] dsn: a new, "
                         "empty database")
    rebuild.add_argument("--central-config", required=True)
    rebuild.add_argument("--timeout", type=float, default=600.0,
                         help="seconds to wait for central to take the site's tables back in")
    rebuild.set_defaults(func=_site_rebuild)
    with_config(site.add_parser("status", help="this site's replication slots")).set_defaults(
        func=_site_status
    )

    certs = sub.add_parser("certs", help="a CA, server and client certificates for central and sites")
    certs.add_argument("--out", required=True, help="directory (the CA in it is reused, never replaced)")
    certs.add_argument("--central-host", action="append", required=True, help="name/IP sites use for central")
    certs.add_argument("--site", action="append", default=[], metavar="SITE_ID=HOST")
    certs.set_defaults(func=_certs)
    return parser


def prefect_environment(env: MutableMapping[str, str], *, quiet: bool = False) -> None:
    """Prefect's settings for our processes, in `env` before Prefect is first imported (it reads them then,
    and the temporary server it starts inherits them). A PREFECT_* value the operator set always wins."""
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in env:  # a site or central never calls home unasked
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # the server's telemetry, and the SDK's with it
        env.setdefault("DO_NOT_TRACK", "1")  # the SDK's analytics, should it ever stop asking the server
    # Prefect's client asks every server for a CSRF token; a server without CSRF protection (Prefect's
    # default) answers 422 and the client stops asking. Protecting the temporary server instead answers
    # the question properly (a local server's API, reachable from any browser tab, is better protected).
    env.setdefault("PREFECT_SERVER_CSRF_PROTECTION_ENABLED", "true")
    # Prefect gives its temporary server 20 s, which its first start (creating its database) on a busy
    # machine can need more than: a flow must not fail because the scheduler's bookkeeping started slowly.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if quiet:  # the flow's result and failures, not its progress
        env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


class _UserErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a failed flow's exception with its traceback. A user's mistake needs none (the CLI says
    it in one line); a bug keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


def _configure_logging(args: argparse.Namespace) -> None:
    """INFO for services, WARNING for a command whose output is its result (`quiet`); each HTTP request
    Prefect's client makes only with --verbose."""
    quiet = getattr(args, "quiet", False) and not args.verbose
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_UserErrorsWithoutTraceback())
    if not args.verbose:
        for name in ("httpx", "uvicorn"):
            logging.getLogger(name).setLevel(logging.WARNING)
    prefect_environment(os.environ, quiet=quiet)


def _named_by_user(exc: OSError, args: argparse.Namespace) -> bool:
    """Whether the missing file is one the user named on the command line (not one the code expected)."""
    if exc.filename is None:
        return False
    given = {os.path.abspath(v) for v in vars(args).values() if isinstance(v, str)}
    return os.path.abspath(exc.filename) in given


# what an install without an extra lacks (pyproject.toml's extras): the command says which to add
EXTRA_FOR = {"prefect": "central", "sklearn": "models", "skl2onnx": "models", "onnx": "edge",
             "onnxruntime": "edge", "streamlit": "app", "altair": "app", "amqtt": "demo",
             "boto3": "edge", "botocore": "edge"}  # off-site copies: [edge] on a site, [central] there


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. A user's mistake (UserError) or environment (a file they named is missing, the
    database cannot be reached, the settings do not validate) is one line and exit 2 (3: the database);
    anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    from bacpipes.db import redact_error  # an error must never show a DSN's password

    def user_error(message: str, code: int = 2) -> int:
        print(f"bacpipes: error: {redact_error(message)}".rstrip(), file=sys.stderr)
        return code

    try:
        return args.func(args) or 0
    except UserError as exc:
        return user_error(str(exc))
    except FileNotFoundError as exc:
        if not _named_by_user(exc, args):
            raise
        return user_error(f"no such file: {exc.filename}")
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return user_error(f"invalid settings: {problems}")  # without the values: one may be a password
    except psycopg.OperationalError as exc:
        return user_error(f"database unavailable: {exc}", 3)
    except ModuleNotFoundError as exc:
        extra = EXTRA_FOR.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        return user_error(f"this command needs {exc.name}, which this install lacks: "
                          f"pip install 'bacpipes[{extra}]'")
    except psycopg.ProgrammingError as exc:
        if redact_error(str(exc)) == str(exc):  # not libpq refusing a connection string: a bug, traced
            raise
        # libpq quotes the piece it could not parse, which may be a password: no traceback, quotes elided
        return user_error(f"invalid database connection string: {exc}")
