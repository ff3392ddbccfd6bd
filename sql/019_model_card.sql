-- A model's card (models.card.ModelCard), stored with the model, and the closed-loop KPIs it achieved.
--
-- model_registry was insert-only by practice, not by rule (bacpipes_flows holds UPDATE on it). Now that it
-- carries claims an operator acts on, the rule is written down: what was registered (the bytes, their
-- hash, the metadata, the metrics and the card built from them) never changes; the only change allowed is
-- to add a closed-loop measurement, appended to `closed_loop`, never rewriting an earlier one. A
-- re-evaluation therefore leaves both results, each with when and by whom it was recorded.
--
-- Not replicated: the link carries model_deployments (bacpipes.replication.CENTRAL_TABLES), not the
-- registry. Grants need nothing new: every role that reads reads every table (sql/018_roles.sql), and
-- the flows' UPDATE on model_registry is what record_closed_loop uses.

ALTER TABLE model_registry
    ADD COLUMN card        jsonb,                       -- ModelCard.to_dict() at registration; NULL before 019
    ADD COLUMN closed_loop jsonb NOT NULL DEFAULT '[]'  -- [{"at", "by", "kpis"}], oldest first
        CHECK (jsonb_typeof(closed_loop) = 'array');

CREATE FUNCTION model_registry_keep_registered() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kept int := jsonb_array_length(OLD.closed_loop);
BEGIN
    IF (NEW.name, NEW.version, NEW.sha256, NEW.metrics, NEW.metadata, NEW.onnx, NEW.created_by, NEW.created_at)
       IS DISTINCT FROM
       (OLD.name, OLD.version, OLD.sha256, OLD.metrics, OLD.metadata, OLD.onnx, OLD.created_by, OLD.created_at)
    THEN
        RAISE EXCEPTION 'model_registry: %@% is registered; register a new version instead of changing it',
            OLD.name, OLD.version;
    END IF;
    IF OLD.card IS NOT NULL AND NEW.card IS DISTINCT FROM OLD.card THEN  -- a pre-019 row may get its card once
        RAISE EXCEPTION 'model_registry: the card of %@% is as registered and cannot change', OLD.name, OLD.version;
    END IF;
    IF jsonb_array_length(NEW.closed_loop) < kept
       OR coalesce((SELECT jsonb_agg(e ORDER BY o) FROM jsonb_array_elements(NEW.closed_loop) WITH ORDINALITY
                    AS x(e, o) WHERE o <= kept), '[]') IS DISTINCT FROM OLD.closed_loop THEN
        RAISE EXCEPTION 'model_registry: closed-loop results of %@% are append-only', OLD.name, OLD.version;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER model_registry_keep_registered BEFORE UPDATE ON model_registry
    FOR EACH ROW EXECUTE FUNCTION model_registry_keep_registered();
