-- Erasure requests (`DELETE /v1/contacts/{id}`), carried out one at a time by the eraser in
-- the order they came. `subject` (the wa_id or user_id) is kept only while the request waits
-- or runs, so that an erasure cut short by a restart is resumed; it is cleared in the
-- transaction that removes the leads. A finished row is the audit record: when, and what was
-- removed, never whose.
CREATE TABLE erasures (
    id INTEGER PRIMARY KEY,
    subject TEXT,
    requested_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    leads INTEGER NOT NULL DEFAULT 0,
    raw_deliveries INTEGER NOT NULL DEFAULT 0,
    unreadable_raw_deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX erasures_pending ON erasures (id) WHERE subject IS NOT NULL;
