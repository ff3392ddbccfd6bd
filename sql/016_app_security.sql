-- The app's logins: every attempt is recorded, and too many failures lock the name and the address.
-- Local to each database like app_users (never replicated). See bacpipes.users.login.

-- One row per login attempt, whatever the name (an unknown name is throttled exactly like a known one,
-- so a lock never tells whether a user exists). outcome: 'failed' is written before the password is
-- checked (a burst of parallel guesses is counted before any of them finishes) and becomes 'ok' when it
-- was right; 'locked' = refused unchecked because the name or the address was locked. address is the
-- TCP peer Streamlit saw ('local' on loopback). Rows older than 30 days are pruned by the next login.
CREATE TABLE app_login_attempts (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    username  text        NOT NULL,
    address   text        NOT NULL,
    outcome   text        NOT NULL CHECK (outcome IN ('ok', 'failed', 'locked'))
);
CREATE INDEX app_login_attempts_user ON app_login_attempts (username, at);
CREATE INDEX app_login_attempts_address ON app_login_attempts (address, at);
CREATE INDEX app_login_attempts_at ON app_login_attempts (at);

-- A lock on a name or an address until locked_until. Failures before count_from no longer count: it is
-- set when a lock is set (once it expires, the next guesses start a new count) and when
-- `bacpipes users unlock` lifts it.
CREATE TABLE app_login_locks (
    kind          text        NOT NULL CHECK (kind IN ('user', 'address')),
    key           text        NOT NULL,
    locked_until  timestamptz,
    count_from    timestamptz,
    PRIMARY KEY (kind, key)
);
