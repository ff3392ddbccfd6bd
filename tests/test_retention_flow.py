"""The retention check flow: expired partitions are reported (an alert, stored and sent to the webhook as
the alert rules' are) or dropped, partitions ahead exist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from bacpipes.db import connect
from bacpipes.partitions import create_partition
from flows.retention import retention_flow
from tests.test_alerts import WebhookSink, webhook  # noqa: F401  (the fixture)


def test_retention_flow_checks_then_enforces(prefect, db_dsn: str, tmp_path: Path,
                                             webhook: WebhookSink) -> None:  # noqa: F811
    conf = tmp_path / "site.toml"
    conf.write_text(f'[site]\nid = "s1"\n[database]\ndsn = "{db_dsn}"\nretention_days = 7\n'
                    f'[alerts]\nwebhook_url = "{webhook.url}"\n')
    with connect(db_dsn, autocommit=True) as conn:
        create_partition(conn, (datetime.now(UTC) - timedelta(days=20)).date())
    checked = retention_flow(str(conf), enforce=False)
    assert not checked["ok"] and len(checked["expired"]) == 1 and checked["missing_ahead"]
    enforced = retention_flow(str(conf))
    assert enforced["ok"] and list(enforced["dropped"]) == checked["expired"]
    assert enforced["expired"] == [] and enforced["missing_ahead"] == []
    with psycopg.connect(db_dsn) as conn:
        alerts = conn.execute("SELECT source, severity, message FROM alerts").fetchall()
    assert len(alerts) == 1 and alerts[0][:2] == ("retention", "warning")
    assert "older than 7 days" in alerts[0][2]
    assert [(b["source"], b["message"]) for b in webhook.bodies] == [("retention", alerts[0][2])]
