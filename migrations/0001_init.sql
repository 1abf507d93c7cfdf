-- Raw deliveries, as received and verified, and the leads extracted from them.

CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,          -- unix milliseconds
    status      TEXT    NOT NULL,          -- parsed | partial | invalid
    lead_count  INTEGER NOT NULL,
    body        BLOB    NOT NULL
);

CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX events_status ON events (status) WHERE status <> 'parsed';

CREATE TABLE leads (
    id                   INTEGER PRIMARY KEY,
    wamid                TEXT    NOT NULL UNIQUE,
    -- No foreign key: retention may prune raw events, never leads.
    event_id             INTEGER NOT NULL,
    waba_id              TEXT,
    phone_number_id      TEXT,
    display_phone_number TEXT,
    wa_id                TEXT,
    user_id              TEXT,
    profile_name         TEXT,
    message_type         TEXT,
    text                 TEXT,
    timestamp            INTEGER,          -- message time, unix seconds
    received_at          INTEGER NOT NULL, -- unix milliseconds
    source_url           TEXT,
    source_id            TEXT,
    source_type          TEXT,
    headline             TEXT,
    body                 TEXT,
    media_type           TEXT,
    image_url            TEXT,
    video_url            TEXT,
    thumbnail_url        TEXT,
    ctwa_clid            TEXT,
    ref                  TEXT,
    welcome_message      TEXT
);
