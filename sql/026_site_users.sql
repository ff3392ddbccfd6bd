-- A site's app users, kept on central so a site rebuilt from central (`bacpipes site rebuild`) gets its
-- operators back without anyone choosing new passwords on a site that has just lost its disk.
--
-- app_users stays local to each database: central's own logins never include a site's. The copy is a
-- table of its own, `bacpipes_private.site_users`, in a schema no group role is granted (018's grants
-- cover the public schema only): the agent, the flows and the app read everything in public, and must
-- not read password hashes. Only the administrator and the link's replication role (granted by
-- `site link`) read it. Hashes are scrypt (bacpipes/users.py); central already holds its own the same way.
--
-- On a site (no registered site), a trigger keeps the copy in step with app_users under the site's id,
-- which the database knows once the site is linked (site_heartbeat: its one row); `site link` copies the
-- users made before that. On central the trigger does nothing: its users are its own.
CREATE SCHEMA bacpipes_private;
REVOKE ALL ON SCHEMA bacpipes_private FROM PUBLIC;

CREATE TABLE bacpipes_private.site_users (
    site_id          text        NOT NULL,
    username         text        NOT NULL,
    password_hash    text        NOT NULL,
    role             text        NOT NULL,
    created_at       timestamptz NOT NULL,
    disabled_at      timestamptz,
    PRIMARY KEY (site_id, username)              -- the replica identity: the row filter's site_id is in it
);

CREATE FUNCTION copy_site_user() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_catalog
AS $$
DECLARE
    here text;
BEGIN
    IF EXISTS (SELECT 1 FROM site) THEN
        RETURN NULL;  -- central
    END IF;
    SELECT min(site_id) INTO here FROM site_heartbeat;
    IF here IS NULL THEN
        RETURN NULL;  -- not linked yet: `site link` copies every user
    END IF;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM bacpipes_private.site_users WHERE site_id = here AND username = OLD.username;
    ELSE
        INSERT INTO bacpipes_private.site_users AS u
            (site_id, username, password_hash, role, created_at, disabled_at)
        VALUES (here, NEW.username, NEW.password_hash, NEW.role, NEW.created_at, NEW.disabled_at)
        ON CONFLICT (site_id, username) DO UPDATE SET password_hash = EXCLUDED.password_hash,
            role = EXCLUDED.role, created_at = EXCLUDED.created_at, disabled_at = EXCLUDED.disabled_at;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER app_users_copied AFTER INSERT OR UPDATE OR DELETE ON app_users
    FOR EACH ROW EXECUTE FUNCTION copy_site_user();

-- On central: the site's own rows only (015_site_guard.sql), and a row arriving again (a resync or a
-- rebuild's relink copies the small tables afresh) replaces the one held.
CREATE TRIGGER a_site_guard BEFORE INSERT OR UPDATE OR DELETE ON bacpipes_private.site_users
    FOR EACH ROW EXECUTE FUNCTION refuse_other_sites_rows('site_users');
ALTER TABLE bacpipes_private.site_users ENABLE REPLICA TRIGGER a_site_guard;

CREATE FUNCTION replace_site_user() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_catalog  -- apply workers run with an empty search_path
AS $$
BEGIN
    DELETE FROM bacpipes_private.site_users WHERE site_id = NEW.site_id AND username = NEW.username;
    RETURN NEW;
END $$;
CREATE TRIGGER site_users_replicated BEFORE INSERT ON bacpipes_private.site_users
    FOR EACH ROW EXECUTE FUNCTION replace_site_user();
ALTER TABLE bacpipes_private.site_users ENABLE REPLICA TRIGGER site_users_replicated;
