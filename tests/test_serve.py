"""The schedules `bacpipes flows serve` registers, and a served run on a real Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from flows.registry import SCHEDULES
from flows.serve import deployments


def test_every_flow_has_its_schedule_and_the_config() -> None:
    built = {d.name: d for d in deployments("/etc/bacpipes/central.toml", central=True)}
    assert set(built) == {f"bacpipes-{name}" for name in SCHEDULES}
    crons = {name: d.schedules[0].schedule.cron for name, d in built.items()}
    assert crons == {"bacpipes-retention": "5 * * * *", "bacpipes-baseline": "30 1 * * *",
                     "bacpipes-train": "0 2 * * *", "bacpipes-ab": "30 3 * * *",
                     "bacpipes-alerts": "* * * * *", "bacpipes-backup": "15 0 * * *",
                     "bacpipes-pitr-backup": "30 0 * * *"}
    assert all(d.parameters["config"] == "/etc/bacpipes/central.toml" for d in built.values())
    assert built["bacpipes-retention"].parameters["central"] is True
    assert built["bacpipes-alerts"].parameters["central"] is True


def test_backup_left_out_where_an_administrator_job_makes_them() -> None:
    built = {d.name for d in deployments("/etc/bacpipes/central.toml", central=True, backup=False)}
    assert built == {f"bacpipes-{name}" for name in SCHEDULES} - {"bacpipes-backup"}


def test_alerts_on_a_site_let_the_database_decide() -> None:
    built = {d.name: d for d in deployments("/etc/bacpipes/site.toml")}
    assert built["bacpipes-alerts"].parameters == {"config": "/etc/bacpipes/site.toml", "central": None}
    assert built["bacpipes-backup"].parameters == {"config": "/etc/bacpipes/site.toml"}


def test_flows_serve_runs_a_deployment_against_a_real_prefect_server(prefect, db_dsn, tmp_path) -> None:
    """`bacpipes flows serve` in its own process, on the test harness's Prefect server: a run of the alerts
    deployment is picked up, executed against the site database, and stores its alert."""
    with psycopg.connect(db_dsn) as conn:  # a site with a published point and no agent heartbeat
        conn.execute("INSERT INTO device (site_id, device_id, address) VALUES ('serve-site', 1, 'x')")
        conn.execute("INSERT INTO point (site_id, device_id, object_type, object_instance)"
                     " VALUES ('serve-site', 1, 'analog-value', 1)")
    config = tmp_path / "site.toml"
    config.write_text(f'[site]\nid = "serve-site"\n[database]\ndsn = "{db_dsn}"\n'
                      f'[alerts]\nstate_path = "{tmp_path / "alerts-state.json"}"\n'
                      f'[backups]\ndir = "{tmp_path / "backups"}"\n')
    # the runner asks for due runs every second, not every 10 s (Prefect's default): what is tested is that
    # the served deployment runs, not how long its polling sleeps
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    served = tmp_path / "serve.log"
    log = served.open("w")
    command = [sys.executable, "-m", "bacpipes.cli", "flows", "serve", "--config", str(config)]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        run = None
        deadline = time.monotonic() + 60
        while run is None:  # the deployments exist once the serving process has registered them
            try:
                run = run_deployment("alerts/bacpipes-alerts", timeout=120, poll_interval=1)
            except Exception:
                assert server.poll() is None and time.monotonic() < deadline, served.read_text()
                time.sleep(1)
        assert run.state is not None and run.state.is_completed(), (run.state, served.read_text())
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    with psycopg.connect(db_dsn) as conn:
        sources = [r[0] for r in conn.execute("SELECT source FROM alerts WHERE resolved_at IS NULL")]
    assert "alerts:agent_offline" in sources
