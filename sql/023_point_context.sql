-- What operators read a point by, as the device describes it, and the trend views they keep.

-- Discovery reads these (edge.discovery): a multi-state object's state-text (state N is state_text[N], the
-- array being 1-based like BACnet's states), a binary object's inactive-text / active-text (0 / 1), and a
-- commandable object's relinquish-default (the value it falls back to when every priority is released; a
-- binary one's as 0/1). NULL where the device does not say: those properties are optional.
ALTER TABLE point
    ADD COLUMN state_text         text[],
    ADD COLUMN inactive_text      text,
    ADD COLUMN active_text        text,
    ADD COLUMN relinquish_default double precision;

-- Saved trend sets: a user's named selection of points and range on the Trends page. Local to each database
-- (not replicated, like app_users): on central, site_id says which site's points they are. A range is either
-- one of the page's named spans (span) or fixed days (first_day .. last_day, in the site's time zone).
CREATE TABLE app_trend_sets (
    username         text        NOT NULL,
    name             text        NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 80),
    site_id          text        NOT NULL,
    point_ids        bigint[]    NOT NULL CHECK (cardinality(point_ids) BETWEEN 1 AND 20),
    span             text,
    first_day        date,
    last_day         date,
    saved_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (username, site_id, name),
    CHECK ((span IS NULL) = (first_day IS NOT NULL AND last_day IS NOT NULL)),
    CHECK (first_day IS NULL OR first_day <= last_day)
);

-- Anyone logged in keeps their own trend sets (viewers too: a trend set changes nothing in the building).
-- bacpipes_grant_roles() adds grants and never revokes this one.
GRANT SELECT, INSERT, UPDATE, DELETE ON app_trend_sets TO bacpipes_app_viewer;
