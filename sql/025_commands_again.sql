-- A row central sent that arrives again is the one already here, for every table the commands
-- subscription carries (write_commands has this since 021: skip_known_command).
--
-- The site's subscription to central (or to central's outbox, issue 19) is made afresh when its slot was
-- lost, when central gains an outbox, or on a relink; it then copies its tables again. Deployments and the
-- A/B schedule are immutable as sent (publish = 'insert'): keep the row here instead of stopping the
-- subscription on a duplicate key. The outbox applies central's rows through the same triggers. REPLICA only.
CREATE FUNCTION skip_known_deployment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.model_deployments WHERE id = NEW.id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER model_deployments_known BEFORE INSERT ON model_deployments
    FOR EACH ROW EXECUTE FUNCTION skip_known_deployment();
ALTER TABLE model_deployments ENABLE REPLICA TRIGGER model_deployments_known;

CREATE FUNCTION skip_known_ab_period() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.ab_schedule
               WHERE site_id = NEW.site_id AND period_start = NEW.period_start) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ab_schedule_known BEFORE INSERT ON ab_schedule
    FOR EACH ROW EXECUTE FUNCTION skip_known_ab_period();
ALTER TABLE ab_schedule ENABLE REPLICA TRIGGER ab_schedule_known;
