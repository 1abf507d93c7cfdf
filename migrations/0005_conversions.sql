-- Conversions API for Business Messaging. `conversions` is the outbox of events reported to
-- Meta: written by the API, or by the projector (auto LeadSubmitted) in the lead's
-- transaction. `event_id` is unique: an event reported twice (same lead and name, or the
-- caller's own id) is one row, and Meta deduplicates on it too.
CREATE TABLE conversions (
    id               INTEGER PRIMARY KEY,
    event_id         TEXT    NOT NULL UNIQUE,
    lead_id          INTEGER NOT NULL,
    event_name       TEXT    NOT NULL,
    event_time       INTEGER NOT NULL,                   -- unix seconds
    value            REAL,
    currency         TEXT,
    status           TEXT    NOT NULL DEFAULT 'pending', -- pending | sent | failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    step             INTEGER NOT NULL DEFAULT 0,         -- position in the retry schedule
    next_attempt_at  INTEGER,                            -- unix ms, while pending
    last_status_code INTEGER,
    last_error       TEXT,
    error_code       INTEGER,                            -- Graph's error.code
    error_subcode    INTEGER,                            -- Graph's error.error_subcode
    fbtrace_id       TEXT,
    created_at       INTEGER NOT NULL,                   -- unix ms
    updated_at       INTEGER NOT NULL                    -- unix ms
);
CREATE INDEX conversions_due ON conversions (next_attempt_at) WHERE status = 'pending';
CREATE INDEX conversions_lead ON conversions (lead_id);
CREATE INDEX conversions_status ON conversions (status, id);

-- Events Meta detected itself in CTWA chats (`automatic_events` webhooks), once per Meta id;
-- shown on the lead with the same ctwa_clid.
CREATE TABLE detected_events (
    id          TEXT    PRIMARY KEY,
    event_name  TEXT    NOT NULL,
    event_time  INTEGER,                                 -- unix seconds, Meta's timestamp
    ctwa_clid   TEXT,
    waba_id     TEXT,
    custom_data TEXT,                                    -- JSON, as Meta sent it
    received_at INTEGER NOT NULL                         -- unix ms
) WITHOUT ROWID;
CREATE INDEX detected_events_clid ON detected_events (ctwa_clid);
