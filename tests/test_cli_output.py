"""What the `bacpipes` command prints: a flow's result and nothing of Prefect's HTTP chatter, nothing that
calls home, and a user's mistake in one line while a bug keeps its traceback. Each runs the real command in
a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bacpipes.cli import build_parser, prefect_environment, streamlit_command
from bacpipes.settings import load_settings
from sim.backfill import backfill
from tests.test_flows import config

CLI = [sys.executable, "-m", "bacpipes.cli"]


def clean_environment(tmp_path: Path) -> dict[str, str]:
    """This process's environment without anything that would turn Prefect's analytics or logging on or
    off for the command, and a Prefect home of its own (its temporary server's database)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect")}


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_flows_run_prints_the_result_and_not_prefects_http_log(db_dsn: str, tmp_path: Path) -> None:
    """The baseline flow on simulated history, in Prefect's temporary server as an operator runs it: the
    output is the result as JSON; no httpx lines, no 422 from the CSRF probe, no telemetry error."""
    conf = config(tmp_path, db_dsn)
    backfill(load_settings(conf), days=14, seed=3, devices=2, interval_s=3600)
    done = run(["flows", "run", "baseline", "--config", conf, "--days", "14"], clean_environment(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["hours"] > 24 * 10 and {"cv_rmse", "nmbe", "meets_guideline_14"} <= set(result)
    for noise in ("httpx", "HTTP Request", "422", "Unprocessable", "telemetry", "Traceback", "temporary"):
        assert noise not in done.stderr, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_prefect_is_told_not_to_call_home_unless_the_operator_says_so(tmp_path: Path) -> None:
    env = clean_environment(tmp_path)
    prefect_environment(env)
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    # Prefect itself, reading that environment: its server's telemetry and its SDK's analytics are off
    ask = ("from prefect.settings import get_current_settings; "
           "from prefect._internal.analytics import is_telemetry_enabled; "
           "print(get_current_settings().server.analytics_enabled, is_telemetry_enabled())")
    said = subprocess.run([sys.executable, "-c", ask], env=env, capture_output=True, text=True, timeout=120)
    assert said.stdout.split() == ["False", "False"], said.stderr

    chosen = {"PREFECT_SERVER_ANALYTICS_ENABLED": "true", "PREFECT_LOGGING_LEVEL": "DEBUG"}
    prefect_environment(chosen, quiet=True)
    assert chosen["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true" and "DO_NOT_TRACK" not in chosen
    assert chosen["PREFECT_LOGGING_LEVEL"] == "DEBUG"


def test_the_app_turns_streamlits_usage_statistics_off(db_dsn: str, tmp_path: Path) -> None:
    conf = config(tmp_path, db_dsn)
    command = streamlit_command(build_parser().parse_args(["ui", "--config", conf]), load_settings(conf))
    options = command[next(i for i, part in enumerate(command) if part.endswith("app.py")) + 1:]
    # Streamlit's own reading of the options `bacpipes ui` gives it
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show", *options],
                           capture_output=True, text=True, timeout=120)
    assert "\ngatherUsageStats = false\n" in shown.stdout, shown.stderr


def test_a_users_mistake_is_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "site.toml"
    conf.write_text('[site]\nid = "s1"\n[database]\ndsn = "postgresql://postgres@127.0.0.1:1/nothing"\n')
    bad_arguments = run(["write", "--config", str(conf), "--point", "1"])
    assert (bad_arguments.returncode, bad_arguments.stderr) == (2, "bacpipes: error: give either --value or "
                                                                   "--release\n")
    no_file = run(["db", "migrate", "--config", str(tmp_path / "missing.toml")])
    assert no_file.returncode == 2 and len(no_file.stderr.splitlines()) == 1, no_file.stderr
    assert "missing.toml" in no_file.stderr
    no_database = run(["db", "migrate", "--config", str(conf)])
    assert no_database.returncode == 3 and "Traceback" not in no_database.stderr, no_database.stderr
    assert no_database.stderr.startswith("bacpipes: error: database unavailable")


@pytest.mark.parametrize("bug", ["RuntimeError", "ValueError", "KeyError"])
def test_a_bug_keeps_its_traceback(bug: str, tmp_path: Path) -> None:
    """The database preparation fails as a bug would (a plain ValueError is no longer the user's fault)."""
    conf = tmp_path / "site.toml"
    conf.write_text('[site]\nid = "s1"\n[database]\ndsn = "postgresql://postgres@127.0.0.1:5432/x"\n')
    script = ("import sys, bacpipes.db\n"
              "def broken(dsn): raise " + bug + "('an internal inconsistency')\n"
              "bacpipes.db.prepare_database = broken\n"
              "from bacpipes.cli import main\n"
              f"sys.exit(main(['db', 'migrate', '--config', {str(conf)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr, done.stderr
    assert done.stderr.rstrip().endswith(f"{bug}: 'an internal inconsistency'" if bug == "KeyError"
                                         else f"{bug}: an internal inconsistency")
    assert "bacpipes: error" not in done.stderr
