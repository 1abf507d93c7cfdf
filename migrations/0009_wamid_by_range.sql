-- Deduplication without a random-keyed index. `wamid UNIQUE` kept an index in wamid order:
-- Meta's wamids are random, so once that index outgrew a projection round every new lead
-- dirtied a leaf of its own, written to the WAL and again at checkpoint. In paired runs at
-- 32 connections for 40 s (production-shaped load, fresh files, same hour) a build without it
-- wrote 8.1-8.4 KB per delivery against 11.6-11.9 and spent 0.90 of the CPU per delivery.
-- The wamid is now indexed behind the lead's id range (`id >> 14`, as the contact indexes of
-- migration 0008), so a round's inserts share the newest range's leaves; the projector checks
-- new wamids against an in-memory filter of every stored one (`store::seen`) and searches
-- this index only when the filter cannot rule a wamid out. SQLite cannot drop a UNIQUE
-- constraint in place, so the table is rebuilt with the same columns and ids.
CREATE TABLE leads_rebuilt (
    id                   INTEGER PRIMARY KEY,
    wamid                TEXT    NOT NULL,
    event_id             INTEGER NOT NULL,
    waba_id              TEXT,
    phone_number_id      TEXT,
    display_phone_number TEXT,
    wa_id                TEXT,
    user_id              TEXT,
    profile_name         TEXT,
    message_type         TEXT,
    text                 TEXT,
    timestamp            INTEGER,
    received_at          INTEGER NOT NULL,
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
INSERT INTO leads_rebuilt SELECT * FROM leads;
DROP TABLE leads;
ALTER TABLE leads_rebuilt RENAME TO leads;
CREATE INDEX leads_received_at     ON leads (received_at);
CREATE INDEX leads_source_id       ON leads (source_id, received_at);
CREATE INDEX leads_ref             ON leads (ref, received_at);
CREATE INDEX leads_source_type     ON leads (source_type, received_at);
CREATE INDEX leads_phone_number_id ON leads (phone_number_id, received_at);
CREATE INDEX leads_waba_id         ON leads (waba_id, received_at);
CREATE INDEX leads_wa_id_by_range ON leads (id >> 14, wa_id, received_at);
CREATE INDEX leads_user_id_by_range ON leads (id >> 14, user_id, received_at);
CREATE INDEX leads_ctwa_clid_tail_by_range ON leads (id >> 14, substr(ctwa_clid, -16), received_at);
CREATE INDEX leads_wamid_by_range ON leads (id >> 14, wamid);
