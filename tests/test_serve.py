"""The schedules `bacpipes flows serve` registers."""

from __future__ import annotations

from flows.serve import SCHEDULES, deployments


def test_every_flow_has_its_schedule_and_the_config() -> None:
    built = {d.name: d for d in deployments("/etc/bacpipes/central.toml", central=True)}
    assert set(built) == {f"bacpipes-{name}" for name in SCHEDULES}
    crons = {name: d.schedules[0].schedule.cron for name, d in built.items()}
    assert crons == {"bacpipes-retention": "5 * * * *", "bacpipes-baseline": "30 1 * * *",
                     "bacpipes-train": "0 2 * * *", "bacpipes-ab": "30 3 * * *",
                     "bacpipes-alerts": "* * * * *", "bacpipes-backup": "15 0 * * *"}
    assert all(d.parameters["config"] == "/etc/bacpipes/central.toml" for d in built.values())
    assert built["bacpipes-retention"].parameters["central"] is True
    assert built["bacpipes-alerts"].parameters["central"] is True


def test_alerts_on_a_site_let_the_database_decide() -> None:
    built = {d.name: d for d in deployments("/etc/bacpipes/site.toml")}
    assert built["bacpipes-alerts"].parameters == {"config": "/etc/bacpipes/site.toml", "central": None}
    assert built["bacpipes-backup"].parameters == {"config": "/etc/bacpipes/site.toml"}
