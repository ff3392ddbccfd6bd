"""deploy/: the compose files, example configs, env examples, systemd unit and guides agree with the code.

No container is started (there is no Docker engine on the CI machines): the files are read and checked
against the real CLI parser (`bacpipes.cli.build_parser`) and the real settings model
(`bacpipes.settings.Settings`), so a renamed command, flag or setting breaks this test, not a site.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel

from bacpipes.cli import build_parser
from bacpipes.db import LOGIN_ROLES, password_variable
from bacpipes.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = [DEPLOY / "site" / "compose.yaml", DEPLOY / "central" / "compose.yaml"]
TOML_EXAMPLES = [DEPLOY / "site" / "site.toml.example", DEPLOY / "central" / "central.toml.example"]
ENV_EXAMPLES = [DEPLOY / "site" / "site.env.example", DEPLOY / "central" / "central.env.example"]
UNITS = sorted(DEPLOY.glob("*.service"))
GUIDES = sorted(DEPLOY.glob("*.md"))
PLACEHOLDERS = {"change-me"}
RUN_OPTIONS_WITH_VALUE = {"-e", "--env", "-u", "--user", "-w", "--workdir", "-v", "--volume"}
# the settings file, and the login roles' passwords `bacpipes db roles` reads: not section/key overrides
SPECIAL_ENV = {"BACPIPES_CONFIG", *(password_variable(r) for r in LOGIN_ROLES)}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|PASSPHRASE|API_KEY", re.IGNORECASE)


# --- helpers ------------------------------------------------------------------------------------------


def compose(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)  # merge keys (<<: *bacpipes) resolved by PyYAML as by compose


def services(path: Path) -> dict[str, dict[str, Any]]:
    return compose(path)["services"]


def as_argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def image_entrypoint() -> list[str]:
    """ENTRYPOINT of deploy/Dockerfile (exec form)."""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            return json.loads(line.removeprefix("ENTRYPOINT").strip())
    raise AssertionError("deploy/Dockerfile has no ENTRYPOINT")


def uses_bacpipes_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if isinstance(build, dict) and build.get("dockerfile") == "deploy/Dockerfile":
        return True
    return str(service.get("image", "")).split(":")[0].endswith("bacpipes")


def effective_entrypoint(service: dict[str, Any]) -> list[str]:
    if "entrypoint" in service:
        return as_argv(service["entrypoint"])
    return image_entrypoint() if uses_bacpipes_image(service) else []


def shell_invocations(script: str) -> list[list[str]]:
    """The argument lists of every `bacpipes ...` in a shell script (one command per line or segment)."""
    found = []
    for line in script.replace("$$", "$").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            if Path(token).name == "bacpipes":
                args = []
                for t in tokens[i + 1:]:
                    if t and all(c in ";&|()<>" for c in t):
                        break
                    args.append(t)
                found.append(args)
    return found


def service_invocations(service: dict[str, Any]) -> list[list[str]]:
    argv = effective_entrypoint(service) + as_argv(service.get("command"))
    if not argv:
        return []
    if Path(argv[0]).name == "bacpipes":
        return [argv[1:]]
    if Path(argv[0]).name in ("sh", "bash") and "-c" in argv:
        return shell_invocations(argv[argv.index("-c") + 1])
    return []


def subparsers_of(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def check_cli(args: list[str], where: str) -> None:
    """`bacpipes ARGS` names real (sub)commands with flags they accept, and parses as the CLI would."""
    root = build_parser()
    parser, path = root, ["bacpipes"]
    for token in args:
        if token.startswith("-"):
            continue
        sub = subparsers_of(parser)
        if sub is None:
            break  # a positional argument of the command itself: parse_args judges it below
        assert token in sub.choices, (
            f"{where}: `{' '.join(path)} {token}` is not a command of the real CLI "
            f"(known: {', '.join(sorted(sub.choices))})"
        )
        parser, path = sub.choices[token], [*path, token]
    known = set(parser._option_string_actions) | set(root._option_string_actions)
    for token in args:
        if token.startswith("-") and token != "-":
            flag = token.split("=", 1)[0]
            assert flag in known, (
                f"{where}: `{' '.join(path)}` has no option {flag} (it has: {', '.join(sorted(known))})"
            )
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            root.parse_args(args)
        except SystemExit as exc:
            command = " ".join(args)
            raise AssertionError(f"{where}: `bacpipes {command}` does not parse: {err.getvalue()}") from exc


def git_ignored(path: Path) -> bool:
    """Ignored by git, as a file or (for a directory the operator creates, such as certs/) a directory."""
    for candidate in (str(path), f"{path}/"):
        if subprocess.run(["git", "check-ignore", "-q", candidate], cwd=ROOT).returncode == 0:
            return True
    return False


def model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def unknown_keys(data: dict[str, Any], model: type[BaseModel], prefix: str = "") -> list[str]:
    """Keys of `data` that `model` has no field for (Settings ignores them silently: extra='ignore')."""
    unknown = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            unknown.append(prefix + key)
            continue
        sub = model_of(field.annotation)
        if sub is not None and isinstance(value, dict):
            unknown += unknown_keys(value, sub, f"{prefix}{key}.")
    return unknown


def env_override_target(name: str) -> str | None:
    """None when BACPIPES_SECTION__KEY names a real settings field, else what is wrong."""
    if name in SPECIAL_ENV:
        return None
    match = re.fullmatch(r"BACPIPES_([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
    if not match:
        return f"{name} is not of the form BACPIPES_<SECTION>__<KEY>"
    section, key = match.group(1).lower(), match.group(2).lower()
    field = Settings.model_fields.get(section)
    if field is None:
        return f"{name}: Settings has no section [{section}] (sections: {', '.join(Settings.model_fields)})"
    model = model_of(field.annotation)
    assert model is not None
    if key not in model.model_fields:
        return f"{name}: [{section}] has no key {key!r} (keys: {', '.join(model.model_fields)})"
    return None


def committed_deploy_files() -> list[Path]:
    """Files under deploy/ that are (or would be) committed: git-ignored ones are the operator's."""
    return [p for p in DEPLOY.rglob("*") if p.is_file() and not git_ignored(p)]


def doc_invocations(path: Path) -> list[tuple[str, list[str]]]:
    """`bacpipes ...` commands in a guide's code blocks, including `docker compose run SERVICE ARGS` of a
    service whose entrypoint is bacpipes (`docker compose exec SERVICE bacpipes ...` is a plain one)."""
    bacpipes_services = {
        name for file in COMPOSE_FILES for name, svc in services(file).items()
        if effective_entrypoint(svc)[:1] == ["bacpipes"]
    }
    text = path.read_text()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            where = f"{path.relative_to(ROOT)}: {line.strip()}"
            for args in shell_invocations(line):
                found.append((where, args))
            tokens = shlex.split(line, comments=True) if line.strip() else []
            if tokens[:2] == ["docker", "run"]:  # the BacPipes image run directly: its entrypoint is bacpipes
                images = [i for i, t in enumerate(tokens) if re.fullmatch(r"bacpipes(:[\w.-]+)?", t)]
                image = images[0] if images else None
                if image is not None:
                    found.append((where, tokens[image + 1:]))
            if tokens[:3] == ["docker", "compose", "run"]:
                rest = tokens[3:]
                while rest and rest[0].startswith("-"):
                    rest = rest[2:] if rest[0] in RUN_OPTIONS_WITH_VALUE else rest[1:]
                if rest and rest[0] in bacpipes_services:
                    found.append((where, rest[1:]))
    return found


# --- the checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_compose_commands_exist_in_cli(path: Path) -> None:
    checked = 0
    for name, service in services(path).items():
        for args in service_invocations(service):
            check_cli(args, f"{path.relative_to(ROOT)} service {name}")
            checked += 1
    assert checked >= 3, f"{path}: expected the BacPipes services to run bacpipes commands"


def test_compose_services_as_specified() -> None:
    site, central = services(COMPOSE_FILES[0]), services(COMPOSE_FILES[1])
    by_command = {" ".join(a[:2]): n for n, s in site.items() for a in service_invocations(s)}
    assert "edge run" in by_command, "the site runs the edge agent"
    assert site[by_command["edge run"]].get("network_mode") == "host", (
        "the edge agent needs the host network (BACnet/IP broadcasts)"
    )
    assert "ui --config" in by_command or any(a[:1] == ["ui"] for s in site.values()
                                              for a in service_invocations(s)), "the site runs the app"
    central_cmds = [a for s in central.values() for a in service_invocations(s)]
    assert ["flows", "serve", "--config", "/etc/bacpipes/central.toml", "--central"] in central_cmds
    assert any(a[:1] == ["ui"] for a in central_cmds), "central runs the app"
    assert any("prefect" in as_argv(s.get("entrypoint")) for s in central.values()), "central runs Prefect"
    for name, svcs in (("site", site), ("central", central)):
        pg = svcs["postgres"]
        assert pg["image"] == "postgres:15", f"{name}: PostgreSQL 15"
        assert "/etc/bacpipes/postgres-entrypoint.sh" in as_argv(pg["entrypoint"])
    script = (DEPLOY / "postgres-entrypoint.sh").read_text()
    for setting in ("wal_level=logical", "ssl=on", "ssl_min_protocol_version=TLSv1.3", "hba_file="):
        assert setting in script, f"deploy/postgres-entrypoint.sh does not set {setting}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_compose_config_paths_are_mounted(path: Path) -> None:
    """`--config F` of a service is a file mounted into that service."""
    for name, service in services(path).items():
        targets = {str(v).split(":")[1] for v in service.get("volumes", []) if ":" in str(v)}
        for args in service_invocations(service):
            for flag in ("--config", "--site-config", "--central-config"):
                if flag in args:
                    config = args[args.index(flag) + 1]
                    assert config in targets, (
                        f"{path.parent.name}/{name}: {config} is not mounted ({sorted(targets)})"
                    )


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_mounted_files_exist_or_are_the_operators(path: Path) -> None:
    """A file mounted from deploy/ is committed, or git-ignored and made by the operator (from a committed
    .example when it is a config or env file): nothing a compose file names is missing from the repo."""
    doc = compose(path)
    sources: list[tuple[str, str]] = []
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                sources.append((name, source))
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            sources.append((name, str(env_file)))
            assert git_ignored(path.parent / env_file), (
                f"{path.parent.name}/{name}: {env_file} holds secrets and must be git-ignored"
            )
            assert (path.parent / f"{env_file}.example").is_file(), f"{env_file}.example is not committed"
    for secret in (doc.get("secrets") or {}).values():
        sources.append(("secrets", secret["file"]))
    for name, source in sources:
        if source.startswith("/"):
            continue  # a host path such as /dev/log
        resolved = (path.parent / source).resolve()
        if resolved.exists() and not git_ignored(resolved):
            continue
        assert git_ignored(resolved), (
            f"{path.parent.name}/{name}: mounts {source}, which is neither in the repository nor an "
            "operator-made (git-ignored) file"
        )
        if resolved.suffix in (".toml", ".env"):
            assert resolved.with_name(resolved.name + ".example").is_file(), f"{source}.example is missing"


@pytest.mark.parametrize("path", [*COMPOSE_FILES, *ENV_EXAMPLES, *UNITS,
                                  DEPLOY / "postgres-entrypoint.sh", DEPLOY / "mosquitto-entrypoint.sh",
                                  *GUIDES], ids=lambda p: str(p.relative_to(DEPLOY)))
def test_env_overrides_name_real_settings(path: Path) -> None:
    names = set(re.findall(r"\bBACPIPES_[A-Z0-9_]+", path.read_text()))
    problems = [p for p in map(env_override_target, sorted(names)) if p]
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


@pytest.mark.parametrize("path", TOML_EXAMPLES, ids=lambda p: p.name)
def test_example_settings_load_and_have_only_real_keys(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("BACPIPES_")]:
        monkeypatch.delenv(name)  # judge the file, not this machine's environment
    settings = load_settings(path)
    data = tomllib.loads(path.read_text())
    unknown = unknown_keys(data, Settings)
    assert not unknown, f"{path.name}: keys Settings does not know (it would silently ignore them): {unknown}"
    assert settings.site.id == data["site"]["id"]
    dsn = conninfo_to_dict(settings.database.dsn)
    assert "password" not in dsn, f"{path.name}: the DSN carries a password; it belongs in the env file"
    assert settings.mqtt.password is None and settings.alerts.smtp_password is None, (
        f"{path.name}: passwords belong in the environment"
    )


def test_site_id_agrees_between_env_and_toml() -> None:
    env = dict(line.split("=", 1) for line in ENV_EXAMPLES[0].read_text().splitlines()
               if line and not line.startswith("#"))
    site = tomllib.loads(TOML_EXAMPLES[0].read_text())["site"]["id"]
    assert env["BACPIPES_SITE__ID"] == site, "site.env.example and site.toml.example name different sites"


def test_no_secret_values_committed() -> None:
    problems = []
    for path in committed_deploy_files():
        text = path.read_text(errors="replace")
        rel = path.relative_to(ROOT)
        if "PRIVATE KEY-----" in text:
            problems.append(f"{rel}: a private key")
        for user, password in re.findall(r"postgres(?:ql)?://([^:/@\s]+):([^@\s]+)@", text):
            if password not in PLACEHOLDERS:
                problems.append(f"{rel}: DSN password for {user} is not a placeholder {sorted(PLACEHOLDERS)}")
        for line in text.splitlines():
            match = re.match(r"\s*#?\s*([A-Za-z0-9_]+)\s*=\s*(\S+)", line)
            if match and SECRET_KEY.search(match.group(1)):
                value = match.group(2).strip("\"'")
                if value not in PLACEHOLDERS and not value.startswith("$"):
                    problems.append(f"{rel}: {match.group(1)} = {value!r} is not a placeholder")
    assert not problems, "\n".join(problems)
    for pattern in ("*.env", "*.passwd", "*.key", "site.toml", "central.toml"):
        tracked = subprocess.run(["git", "ls-files", "deploy", f"*{pattern}"], cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout.split()
        assert not [t for t in tracked if Path(t).match(pattern)], f"committed in deploy/: {tracked}"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_unit(path: Path) -> None:
    unit: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            unit[key.strip()] = value.strip()
    exec_start = shlex.split(unit["ExecStart"])
    assert Path(exec_start[0]).name == "bacpipes", f"{path.name}: ExecStart does not run bacpipes"
    check_cli(exec_start[1:], f"{path.name} ExecStart")
    assert unit.get("User") == "bacpipes" and unit.get("Restart") == "always"
    assert unit.get("NoNewPrivileges") == "yes" and unit.get("ProtectSystem") == "strict"
    assert not unit.get("AmbientCapabilities"), "BACnet's 47808 is not a privileged port: no capabilities"
    config = exec_start[exec_start.index("--config") + 1]
    assert config.startswith("/etc/bacpipes/"), config
    # the spool of the example site settings is writable under ProtectSystem=strict
    spool = Path(tomllib.loads(TOML_EXAMPLES[0].read_text())["spool"]["path"])
    writable = [Path(p.lstrip("-")) for p in unit.get("ReadWritePaths", "").split()]
    writable += [Path("/var/lib") / d for d in unit.get("StateDirectory", "").split()]
    assert any(spool.is_relative_to(w) for w in writable), (
        f"{path.name}: [spool] path {spool} of site.toml.example is not writable (ReadWritePaths {writable})"
    )


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_guides_name_real_commands(path: Path) -> None:
    for where, args in doc_invocations(path):
        check_cli(args, where)


def test_readme_indexes_the_deploy_files() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for name in ("Dockerfile", "site/compose.yaml", "central/compose.yaml", "site/site.toml.example",
                 "central/central.toml.example", "bacpipes-edge.service", "connect-a-site.md",
                 "replication.md"):
        assert name in readme, f"deploy/README.md does not mention {name}"
