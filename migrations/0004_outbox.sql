-- Lead forwarding: one delivery per (lead, destination), written by the projector in the same
-- transaction as the lead, so neither exists without the other. `webhook_id` is the Standard
-- Webhooks message id: stable across retries (the receiver's idempotency key), new on replay.
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    webhook_id       TEXT    NOT NULL DEFAULT ('msg_' || lower(hex(randomblob(16)))),
    destination      TEXT    NOT NULL,
    lead_id          INTEGER NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending', -- pending | succeeded | failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    step             INTEGER NOT NULL DEFAULT 0,         -- position in the retry schedule
    next_attempt_at  INTEGER,                            -- unix ms, while pending
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,                   -- unix ms
    updated_at       INTEGER NOT NULL                    -- unix ms
);
-- What each destination's worker sends next: due pending deliveries, oldest due first.
CREATE INDEX deliveries_due ON deliveries (destination, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_lead ON deliveries (lead_id);
CREATE INDEX deliveries_status ON deliveries (status, destination, id);
