-- Where a command came from is decided by the site, not by what the command says about itself.
--
-- 1. A release writes Null into its priority slot, so a release row carries no value: a row that is both
--    (an MQTT message {"release": true, "value": V} used to leave V in the device) cannot be stored.
--    NOT VALID: rows already stored are history (the table is append-only) and are not re-checked; every
--    new row, local or replicated, is. The executor writes Null for any release whatever the row says.
ALTER TABLE write_commands
    ADD CONSTRAINT write_commands_release_has_no_value
    CHECK (command_type = 'write_value' OR value IS NULL) NOT VALID;

-- 2. How the row reached this database: 'local' (inserted here: MQTT intake, app, CLI, edge ML) or
--    'replication' (applied by a logical-replication worker, i.e. sent by central). Control authority is
--    judged on this, never on `source`: central can write any `source` it likes ('cli', 'ui'), so a
--    replicated command is remote whatever it says, and runs only under a remote grant.
--    The trigger is ENABLE REPLICA: it fires exactly in sessions with session_replication_role = replica,
--    which every apply and table-sync worker runs with, and a value central sent for the column is
--    overwritten. A local session that sets that role itself (superuser only) only makes its own commands
--    remote, which fails safe. Apply workers run with search_path = '': nothing here names a relation.
ALTER TABLE write_commands
    ADD COLUMN arrived text NOT NULL DEFAULT 'local' CHECK (arrived IN ('local', 'replication'));

CREATE FUNCTION mark_replicated_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.arrived := 'replication';
    RETURN NEW;
END $$;
CREATE TRIGGER write_commands_arrived BEFORE INSERT ON write_commands
    FOR EACH ROW EXECUTE FUNCTION mark_replicated_command();
ALTER TABLE write_commands ENABLE REPLICA TRIGGER write_commands_arrived;
