-- Every command attempt leaves a row. A command message whose id is already stored (an MQTT redelivery, a
-- replay by anyone who can publish, or an id reused with other content) is never run again, and
-- command_events holds one outcome per command, so the extra arrival is recorded here, with why it did not
-- run. Append-only like the rest of the trail; a UUID key, so it may replicate to central as is.
CREATE TABLE command_attempts (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    command_id       uuid        NOT NULL REFERENCES write_commands (id),
    site_id          text        NOT NULL,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    source           text        NOT NULL,
    created_by       text        NOT NULL,
    same_content     boolean     NOT NULL,           -- false: the id was reused for a different command
    detail           text        NOT NULL            -- why it did not run, for a person
);
CREATE INDEX command_attempts_command ON command_attempts (command_id, at);
CREATE TRIGGER command_attempts_append_only BEFORE UPDATE ON command_attempts
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Retention deletes the ingest rejects older than the readings' retention (bacpipes/partitions.py).
CREATE INDEX ingest_rejects_received ON ingest_rejects (received_at);
