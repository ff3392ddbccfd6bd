-- Writes: one audited path from every source (MQTT, UI, CLI, central, ML) to BACnet priorities.
-- Both tables are append-only, so each replicates in one direction: write_commands central->site (and
-- site-local inserts), command_events site->central. A UUID id lets both ends create commands.

-- Per-point write limits, set by an operator (never by discovery). NULL: no limit beyond the device's.
ALTER TABLE point
    ADD COLUMN min_value    double precision,
    ADD COLUMN max_value    double precision,
    ADD COLUMN ml_min_value double precision,       -- ML may write only inside these, and only if both
    ADD COLUMN ml_max_value double precision,       -- are set: a point without ML limits is off limits
    ADD COLUMN ml_max_step  double precision,       -- largest change per ML command from the present value
    ADD CONSTRAINT point_write_range CHECK (min_value IS NULL OR max_value IS NULL OR min_value <= max_value),
    ADD CONSTRAINT point_ml_range CHECK (ml_min_value IS NULL OR ml_max_value IS NULL
                                          OR ml_min_value <= ml_max_value);

CREATE TABLE write_commands (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id          text        NOT NULL,
    point_id         bigint,                         -- NULL only for a command too malformed to name one
    command_type     text        NOT NULL CHECK (command_type IN ('write_value', 'release_priority')),
    value            double precision,               -- NULL for a release
    priority         smallint    DEFAULT 8,          -- range checked by the executor, which says why; NULL: unreadable
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text        NOT NULL,
    source           text        NOT NULL CHECK (source IN ('mqtt', 'ui', 'central', 'ml', 'cli')),
    source_ip        inet,
    reason           text,
    not_after        timestamptz                     -- arriving later than this, it is rejected, not run
);
CREATE INDEX write_commands_site_created ON write_commands (site_id, created_at);

CREATE TABLE command_events (
    command_id       uuid        NOT NULL REFERENCES write_commands (id),
    site_id          text        NOT NULL,
    status           text        NOT NULL
                     CHECK (status IN ('accepted', 'executing', 'completed', 'failed', 'rejected')),
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    agent            text,                           -- which agent claimed/ran it (crash recovery is per agent)
    detail           text,                           -- the reason, for a person, on failed/rejected
    value_read       double precision,               -- presentValue read back after the write
    priority_array   jsonb,                          -- the 16 slots read back (null = empty)
    -- one row per status: inserting 'executing' is the claim, so two agents never both run a command
    PRIMARY KEY (command_id, status)
);
-- and one outcome per command
CREATE UNIQUE INDEX command_events_one_outcome ON command_events (command_id)
    WHERE status IN ('completed', 'failed', 'rejected');

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: insert a new row instead of changing one', TG_TABLE_NAME;
END $$;
CREATE TRIGGER write_commands_append_only BEFORE UPDATE ON write_commands
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER command_events_append_only BEFORE UPDATE ON command_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Wake the executor within milliseconds; ALWAYS, so rows arriving by logical replication wake it too.
CREATE FUNCTION notify_write_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('write_commands', NEW.site_id);
    RETURN NULL;
END $$;
CREATE TRIGGER write_commands_notify AFTER INSERT ON write_commands
    FOR EACH ROW EXECUTE FUNCTION notify_write_command();
ALTER TABLE write_commands ENABLE ALWAYS TRIGGER write_commands_notify;

-- The seed's columns, derived from the event trail.
CREATE VIEW write_command_status AS
SELECT c.*,
       coalesce(o.status, x.status, a.status, 'pending') AS status,
       x.at AS executed_at,
       o.at AS completed_at,
       CASE WHEN o.status IN ('failed', 'rejected') THEN o.detail END AS error_message,
       o.value_read,
       o.priority_array
FROM write_commands c
LEFT JOIN command_events a ON a.command_id = c.id AND a.status = 'accepted'
LEFT JOIN command_events x ON x.command_id = c.id AND x.status = 'executing'
LEFT JOIN command_events o ON o.command_id = c.id AND o.status IN ('completed', 'failed', 'rejected');

-- Control authority: who may write. Append-only too; the latest row per site rules.
-- mode 'edge': local sources only (mqtt, ui, cli). mode 'remote': central and ml as well, until `until`.
CREATE TABLE control_authority (
    id               bigserial   PRIMARY KEY,
    site_id          text        NOT NULL,
    mode             text        NOT NULL CHECK (mode IN ('edge', 'remote')),
    until            timestamptz,                    -- required for remote: a grant always runs out
    granted_by       text        NOT NULL,
    reason           text,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (mode = 'edge' OR until IS NOT NULL)
);
CREATE INDEX control_authority_site_at ON control_authority (site_id, at DESC);
