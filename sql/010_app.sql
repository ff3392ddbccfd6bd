-- The app: the agent's health travels with the heartbeat (so central sees it too), and app users.

-- The edge agent's health counters (edge.agent.EdgeAgent.health) as of the heartbeat; NULL when the
-- heartbeat was written by something else (site link). at = the agent's last sign of life.
ALTER TABLE site_heartbeat ADD COLUMN agent jsonb;

-- Operators and viewers of the Streamlit app. Local to each database (never replicated): a site's
-- operators are not central's. password_hash is scrypt (bacpipes.users); there are no default users.
CREATE TABLE app_users (
    username         text        PRIMARY KEY,
    password_hash    text        NOT NULL,
    role             text        NOT NULL CHECK (role IN ('viewer', 'operator')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    disabled_at      timestamptz
);
