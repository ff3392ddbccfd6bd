"""Settings: a TOML file, overridden by environment variables (BACPIPES_SECTION__KEY).

Secrets (MQTT password, database password) belong in the environment, never in the TOML file in git.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bacpipes.errors import MissingFile, UserError


class SiteSettings(BaseModel):
    id: str = "macau-casino"
    timezone: str = "Asia/Macau"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)  # at load time, rather than at the first publish
        except (ZoneInfoNotFoundError, ValueError):
            # pydantic turns a ValueError into a ValidationError; load_settings makes that a UserError
            raise ValueError(f"unknown timezone {value!r}") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class DatabaseSettings(BaseModel):
    dsn: str = "postgresql://postgres@127.0.0.1:5432/bacpipes"
    retention_days: int = Field(7, ge=1)  # site default; central keeps 30 days to a year


class MqttSettings(BaseModel):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    client_id: str = "bacpipes-edge"
    qos: int = Field(1, ge=0, le=2)
    ca_file: str | None = None
    keepalive_s: int = 30
    max_inflight: int = 100
    health_interval_s: float = 60.0
    batch_per_equipment: bool = False  # also publish {site}/{equip}/batch per poll


class BacnetSettings(BaseModel):
    address: str = "127.0.0.100/8:47900"
    device_id: int = 3001234
    apdu_timeout_ms: int = 1500
    apdu_retries: int = 1
    # an invoke id rests this long after its exchange with a device before that device sees it again, so a
    # late or replayed answer cannot be taken for another request's (edge.bacnet.InvokeIds)
    invoke_id_reuse_s: float = Field(5.0, ge=0)


class DiscoverySettings(BaseModel):
    targets: list[str] = ["127.0.0.10-127.0.0.19"]
    bbmd: str | None = None
    timeout_s: float = 2.0
    low: int = 0
    high: int = 4194303
    import_history: bool = True  # read the devices' trend logs into sensor_readings after each discovery


class PollingSettings(BaseModel):
    default_interval_s: float = 30
    max_backoff_s: float = 300


class CovSettings(BaseModel):
    """Change-of-value acquisition, for points whose `acquisition` is 'cov' (edge/cov.py).

    A subscription lives `lifetime_s` on the device and is renewed when `renew_fraction` of it has passed,
    so a device that restarted (and forgot it) is subscribed again within that time at the latest. A COV
    point is still polled every max(its interval, check_interval_s): a check, and how a restart is noticed.
    """

    lifetime_s: int = Field(300, ge=1)
    renew_fraction: float = Field(0.8, gt=0, lt=1)
    confirmed: bool = False  # site default; point.cov_confirmed overrides it per point
    check_interval_s: float = Field(300.0, gt=0)
    retry_refused_s: float = Field(3600.0, gt=0)  # a refused point is polled; asked again after this


class IngestSettings(BaseModel):
    enabled: bool = True  # run the MQTT -> PostgreSQL ingester inside `bacpipes edge run`


class WriteSettings(BaseModel):
    enabled: bool = True  # `bacpipes edge run` executes write commands
    command_topic: str = "bacnet/write/command"
    result_topic: str = "bacnet/write/result"
    allow_life_safety: bool = False  # priorities 1-2
    ml_priority: int = Field(8, ge=3, le=16)
    poll_interval_s: float = Field(5.0, gt=0)  # safety net beside LISTEN/NOTIFY
    pending_window_h: float = Field(24.0, gt=0)  # older commands that never ran are not looked at


class ReplicationSettings(BaseModel):
    """How the *other* database reaches this one, and where this host keeps its client certificate.

    host/port default to the database DSN's; certs_dir holds ca.crt and the client cert/key this side's
    subscription presents (readable by the PostgreSQL server user of this host).
    """

    host: str | None = None
    port: int | None = None
    certs_dir: str = "/etc/bacpipes/certs"
    max_slot_wal_keep_size: str = "2GB"  # a slot never holds more WAL than this: the disk cannot fill
    lag_alert_s: float = 300.0  # the seed's alert: replication lag > 5 min
    heartbeat_s: float = 10.0


class MlSettings(BaseModel):
    """Edge inference: every interval, the deployed model picks a cooling setpoint per zone."""

    enabled: bool = False
    model: str = "setpoint"
    interval_s: float = Field(900.0, gt=0)
    comfort_low_c: float = 22.0
    comfort_high_c: float = 25.0
    # the receding-horizon policy (models.mpc): its grid of setpoint levels, horizon in intervals, aim this
    # far inside the comfort band, and the cost (kW per interval) of each kelvin a setpoint moves, against
    # chatter. Grid and margin as evaluated on the EnergyPlus building (sim.energyplus.closed_loop.EVALUATED);
    # a 15-zone round with them and the outlook: median 0.16 s, p95 0.34 s on a loaded 2-core machine
    # (benchmarks/bench_ml.py, one ONNX thread)
    candidate_step_c: float = Field(0.25, gt=0)
    mpc_horizon_steps: int = Field(8, ge=1, le=32)
    mpc_margin_c: float = Field(0.25, ge=0)
    mpc_change_cost: float = Field(3.0, ge=0)
    # its outlook (models.outlook: occupancy by time of week, outdoor temperature ahead, HVAC electricity
    # per kW of zone cooling), learnt once a day from this much of the site's history; with less than
    # outlook_min_days the policy runs without one (the present held, every step occupied)
    outlook_history_days: float = Field(14.0, gt=0)
    outlook_min_days: float = Field(1.0, gt=0)
    stale_after_s: float = Field(1800.0, gt=0)  # inputs older than this: no decision, no write
    release_after_s: float = Field(3600.0, gt=0)  # no good decision for this long: give the ML priority back
    # where the training flow writes exported ONNX files (git-ignored: var/ is; never the source tree)
    models_dir: str = "var/models"


class GuardSettings(BaseModel):
    """The edge guard (edge/guard.py): while a model is active it watches the zones the model commands, and
    on a breach gives the ML priority back, stands the deployment down and tells central (which rolls back).

    A trip is safe by construction (the building returns to its own schedule; a new deployment re-arms the
    guard), so the defaults lean towards tripping: a model that needs more room than this should not be
    active. Comfort and humidity are judged in occupied hours only (the zone's occupancy reading > 0; a zone
    without one, always), on readings taken since the model first wrote to the zone.
    """

    enabled: bool = True  # runs beside inference (ml.enabled)
    interval_s: float = Field(30.0, gt=0)
    occupied_only: bool = True
    # comfort band: outside ml.comfort_low_c..comfort_high_c by more than the tolerance, for longer than grace
    comfort_tolerance_k: float = Field(0.5, ge=0)
    comfort_grace_s: float = Field(300.0, ge=0)
    # comfort ramp (ASHRAE 55-2020, 5.3.5 drifts and ramps): more than 1.1 K within 15 minutes
    ramp_k: float = Field(1.1, gt=0)
    ramp_window_s: float = Field(900.0, gt=0)
    # humidity, where the zone has an RH point (<prefix>-ZN-RH)
    humidity_max_pct: float = Field(60.0, gt=0, le=100)
    humidity_grace_s: float = Field(900.0, ge=0)
    # equipment: counted over the window (an hour by default)
    window_s: float = Field(3600.0, gt=0)
    chatter_max_reversals: int = Field(4, ge=1)  # ML setpoint commands changing direction, per zone
    cycling_max_starts: int = Field(6, ge=1)  # cooling off -> on, per air handler (compressors: 6/h at most)
    cycling_on_fraction: float = Field(0.1, gt=0, lt=1)  # "on": above this share of the window's peak


class AbSettings(BaseModel):
    """The switchback A/B test (models.ab; the ab-plan and ab flows, the app's A/B page).

    A building's mass carries the previous arm into the next period, so `washout_h` hours after each
    period's start can be scored to neither arm (the edge follows the schedule throughout), and
    `switch_hour` (local, site.timezone) starts the periods at a quiet hour (e.g. 22 for an office);
    unset, periods start at the plan's start (midnight UTC for the ab-plan flow), as before.
    Both default to off, measured (sim/energyplus/ab_check.py, EnergyPlus office, 14 July days): there
    the carry-over is heat stored in the mass and released over the whole next occupied day, so no
    washout of hours removed any of it (+11.7 % read against a true 4.1 %, with or without 3 or 6 h, at
    midnight or 22:00), and a 6 h washout after a midnight switch dropped the MPC's own pre-cooling
    (04-06 h), flattering it. Use a washout with a quiet switch hour where carry-over is a transient.
    """

    washout_h: float = Field(0.0, ge=0, le=168)  # keep it shorter than the periods (else nothing is scored)
    switch_hour: int | None = Field(None, ge=0, le=23)


class AlarmSettings(BaseModel):
    """Alarms from the building itself (bacpipes.alarms, judged by the edge agent; Overview, Alarms and the
    Equipment pages read the same band). A zone is out of band `deadband_k` beyond its cooling or heating
    setpoint (0.3 K: a zone 0.5 K above is out, a thermostat's own swing is not) and back within half of
    it; an alarm is raised once the condition has held `delay_s` by the readings' own times."""

    deadband_k: float = Field(0.3, gt=0, le=5)  # kelvin (scaled for a point in °F)
    delay_s: float = Field(600.0, ge=0)
    interval_s: float = Field(60.0, gt=0)  # how often the agent evaluates (wall seconds)
    severity: Literal["critical", "warning", "info"] = "warning"


class EnergySettings(BaseModel):
    """A flat tariff for the app's Energy and A/B pages. Unset, savings are shown in kWh only: a price
    someone has to guess is worse than none. Set both (`price_per_kwh = 0.21`, `currency = "USD"`)."""

    price_per_kwh: float | None = Field(None, gt=0)
    currency: str | None = Field(None, min_length=1, max_length=8)

    @model_validator(mode="after")
    def _both_or_neither(self) -> EnergySettings:
        if (self.price_per_kwh is None) != (self.currency is None):
            raise ValueError("[energy] price_per_kwh and currency go together: set both, or neither")
        return self

    @property
    def priced(self) -> bool:
        return self.price_per_kwh is not None


class ClockSettings(BaseModel):
    """For simulation and evaluation only (`bacpipes.clock`): the agent reads a scaled clock, shared with a
    simulated building, that reads `origin` at `wall_start` (epoch seconds; default: when the agent starts)
    and runs at `speed` x wall time. The default, no origin and speed 1, is the wall clock: a real site
    never sets this section."""

    speed: float = Field(1.0, gt=0)
    origin: AwareDatetime | None = None
    wall_start: float | None = None


class CentralSettings(BaseModel):
    """`outbox_dsn`: the database central's commands, deployments and A/B schedule leave from, in a cluster
    of its own on central's host, so that each site's WAL sender decodes only them and not every site's
    readings (issue 19: without it, central's CPU grows with the square of the number of sites). Sites reach
    it at `[replication] host` and `outbox_port` (default: the DSN's port). None: central's own database
    publishes them, which is fine for a few tens of sites."""

    retention_days: int = Field(30, ge=1, le=366)
    # the Dask scheduler the fleet flows' per-site tasks run on (flows.fleet), e.g. "tls://dask.example:8786"
    # (settings, DSN included, travel to its workers: use TLS off this host); None: a local cluster, a worker
    # process per CPU, started for the run
    dask_address: str | None = None
    outbox_dsn: str | None = None
    outbox_port: int | None = Field(None, ge=1, le=65535)


class SpoolSettings(BaseModel):
    path: str = "var/spool.sqlite"


class AlertSettings(BaseModel):
    """The operations alert rules (`central.alerts`) and where new alerts are sent.

    Nothing is sent unless a channel is set; alerts are stored either way. Channels (`bacpipes.alerts`):
    webhook_url; e-mail (smtp_host + mail_to); Telegram (telegram_bot_token + telegram_chat_id: one
    sendMessage per batch of new alerts); PagerDuty Events v2 (pagerduty_routing_key: a trigger per new
    alert and a resolve when it clears, deduplicated per rule, site and point); SMS through an HTTP gateway
    (sms_url + sms_to: one message per number per batch). The *_url bases default to the real services and
    exist so tests (or a proxy) can point elsewhere. In sms_url, sms_headers and sms_body's strings,
    {to}, {text} and {token} become the number, the message and sms_token (URL-quoted in sms_url);
    sms_body is sent as JSON, or as an HTML form with sms_body_format = "form" (Twilio's style), or not at
    all with sms_method = "GET".

    Secrets belong in the environment, never in the TOML file: BACPIPES_ALERTS__SMTP_PASSWORD,
    BACPIPES_ALERTS__TELEGRAM_BOT_TOKEN, BACPIPES_ALERTS__PAGERDUTY_ROUTING_KEY, BACPIPES_ALERTS__SMS_TOKEN.
    """

    webhook_url: str | None = None  # HTTP POST, one JSON object per new alert (Slack-style "text" included)
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_starttls: bool = True
    smtp_username: str | None = None
    smtp_password: str | None = None
    mail_from: str = "bacpipes@localhost"
    mail_to: list[str] = []
    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str | None = None  # a chat's id (groups are negative) or "@channelname"
    telegram_api_url: str = "https://api.telegram.org"  # POST {this}/bot<token>/sendMessage
    pagerduty_routing_key: SecretStr | None = None  # an Events API v2 integration key
    pagerduty_url: str = "https://events.pagerduty.com"  # POST {this}/v2/enqueue
    sms_url: str | None = None
    sms_to: list[str] = []  # numbers, E.164 ("+4479...")
    sms_method: Literal["POST", "GET"] = "POST"
    sms_body: dict[str, Any] = {"to": "{to}", "text": "{text}"}
    sms_body_format: Literal["json", "form"] = "json"
    sms_headers: dict[str, str] = {}  # e.g. {Authorization = "Bearer {token}"}
    sms_token: SecretStr | None = None
    delivery_timeout_s: float = Field(10.0, gt=0)
    # the seed's thresholds
    write_failure_rate: float = Field(0.05, ge=0, le=1)  # failed / (completed + failed), last hour
    write_min_commands: int = Field(5, ge=1)  # fewer outcomes than this in the hour: no verdict
    read_failure_rate: float = Field(0.10, ge=0, le=1)
    read_min_reads: int = Field(20, ge=1)  # for the agent's cumulative counters (central's view)
    disk_free_min: float = Field(0.20, ge=0, le=1)
    disk_path: str | None = None  # default: the database's data directory, when it is on this host
    db_down_s: float = Field(60.0, ge=0)
    connect_timeout_s: int = Field(10, ge=1)
    state_path: str = "var/alerts-state.json"  # remembers a database outage the database cannot hold


class BackupSettings(BaseModel):
    dir: str = "var/backups"
    keep_days: int = Field(7, ge=1)
    # `flows serve` runs the daily backup; off where an administrator's job makes them (deploy/: pg_dump
    # reads every table, password hashes included, which the flows' own database role may not)
    scheduled: bool = True
    # central's point-in-time recovery (central/pitr.py, pgBackRest): its config, log and lock files in
    # pitr_dir, the repository in pitr_repo (default <pitr_dir>/repo), both owned by the server's user.
    # pgBackRest reads the data directory itself, so it runs on central's host, as the server's user.
    pitr_dir: str = "var/pgbackrest"
    pitr_repo: str | None = None
    pitr_stanza: str = "central"
    pitr_retention_days: int = Field(30, ge=1)  # any time this far back can be restored
    pitr_pg_data: str | None = None  # central's data directory (needed to back up, not to restore)
    pitr_pg_socket: str = "/var/run/postgresql"  # pgBackRest reaches the server on its unix socket only


class OffsiteSettings(BaseModel):
    """Off-site copies (bacpipes.offsite): each backup dump, and central's pgBackRest repository after each
    of its backups, uploaded to an S3-compatible store as s3://bucket/prefix/<site>/..., checked after
    upload (size and SHA-256) and pruned after retention_days (never the newest copy).

    Off unless enabled. The credentials come from the environment only, through boto3's usual chain
    (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or the machine's role), never from this
    file: an unknown key in [offsite] (a secret key, say) is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    endpoint_url: str | None = None  # e.g. "https://s3.example.com:9000"; None: AWS S3 of the region
    bucket: str | None = None
    prefix: str = "bacpipes"  # the folder within the bucket; each site's copies go in <prefix>/<site>/
    region: str | None = None  # None: boto3's (AWS_DEFAULT_REGION, ~/.aws/config), else us-east-1
    retention_days: int = Field(30, ge=1)  # copies older than this are deleted (the newest never is)
    connect_timeout_s: float = Field(10.0, gt=0)
    addressing_style: Literal["auto", "path", "virtual"] = "auto"  # "path" for most self-hosted stores

    @model_validator(mode="after")
    def _bucket_when_enabled(self) -> OffsiteSettings:
        if self.enabled and not self.bucket:
            raise ValueError("[offsite] enabled needs a bucket")
        return self


class UiSettings(BaseModel):
    """The Streamlit app (`bacpipes ui`): on loopback unless told otherwise; HTTPS with cert_file/key_file
    (or a TLS proxy in front of it)."""

    host: str = "127.0.0.1"
    port: int = Field(8501, ge=1, le=65535)
    live_refresh_s: float = Field(5.0, gt=0)
    stale_after_intervals: float = Field(3.0, gt=0)  # a value older than this many poll intervals is stale
    raw_max_days: float = Field(2.0, gt=0)  # longer trend ranges read the hourly rollup
    write_wait_s: float = Field(10.0, gt=0)  # how long a write from the app waits for the device's answer
    # Nothing is shown before a login; kiosk = true lets anyone who reaches a *site's* app see Overview and
    # Live without one (a wall display; never on central, never a write).
    kiosk: bool = False
    # HTTPS: the server's certificate (chain) and key, PEM; `bacpipes certs` makes a pair (or bring your own)
    cert_file: str | None = None
    key_file: str | None = None
    # login throttling: this many failures for one name (or from one client address) within the window
    # lock it for lockout_s; `bacpipes users unlock` lifts a lock early
    login_failures: int = Field(5, ge=1)
    login_address_failures: int = Field(20, ge=1)  # higher: people behind one NAT share an address
    login_window_s: float = Field(900.0, gt=0)
    lockout_s: float = Field(900.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BACPIPES_", env_nested_delimiter="__", extra="ignore")

    site: SiteSettings = SiteSettings()
    database: DatabaseSettings = DatabaseSettings()
    mqtt: MqttSettings = MqttSettings()
    bacnet: BacnetSettings = BacnetSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    polling: PollingSettings = PollingSettings()
    cov: CovSettings = CovSettings()
    spool: SpoolSettings = SpoolSettings()
    ingest: IngestSettings = IngestSettings()
    writes: WriteSettings = WriteSettings()
    replication: ReplicationSettings = ReplicationSettings()
    central: CentralSettings = CentralSettings()
    ml: MlSettings = MlSettings()
    clock: ClockSettings = ClockSettings()
    guard: GuardSettings = GuardSettings()
    ab: AbSettings = AbSettings()
    alarms: AlarmSettings = AlarmSettings()
    energy: EnergySettings = EnergySettings()
    alerts: AlertSettings = AlertSettings()
    backups: BackupSettings = BackupSettings()
    offsite: OffsiteSettings = OffsiteSettings()
    ui: UiSettings = UiSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_path())
        return (init_settings, env_settings, toml)


_config_override: Path | None = None


def default_config_file() -> Path:
    """The embedded defaults (also packaged into the wheel)."""
    repo_copy = Path(__file__).resolve().parent.parent / "config" / "bacpipes.toml"
    if repo_copy.exists():
        return repo_copy
    return Path(str(resources.files("bacpipes") / "_config" / "bacpipes.toml"))


def _config_path() -> Path:
    if _config_override is not None:
        return _config_override
    env = os.environ.get("BACPIPES_CONFIG")
    return Path(env) if env else default_config_file()


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from `config` (or $BACPIPES_CONFIG, or the embedded defaults) plus env.

    Every mistake in them is a UserError naming the file and the setting: a missing file, a file that is not
    TOML, a value out of range or of the wrong type.
    """
    global _config_override
    _config_override = Path(config) if config else None
    file = _config_path()
    try:
        if not file.is_file():  # pydantic-settings would skip it silently and run on defaults
            how = "" if config or "BACPIPES_CONFIG" not in os.environ else " ($BACPIPES_CONFIG)"
            raise MissingFile(f"config file not found: {file}{how}")
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{file} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        raise UserError(f"invalid settings in {file} or BACPIPES_* variables: {_problems(exc)}") from None
    finally:
        _config_override = None


def _problems(error: ValidationError) -> str:
    """`section.key: what is wrong` for each setting, on one line. The values are left out: one of them
    may be a password."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg'].removeprefix('Value error, ')}"
        for problem in error.errors()
    )
