-- Index-backed listing: each filter column with received_at, so a filtered page newest-first
-- (ORDER BY received_at DESC, id DESC) reads the index in order and stops after LIMIT rows.
-- The rowid (id) is implicitly the last key column of every index.
CREATE INDEX leads_received_at     ON leads (received_at);
CREATE INDEX leads_source_id       ON leads (source_id, received_at);
CREATE INDEX leads_ctwa_clid       ON leads (ctwa_clid, received_at);
CREATE INDEX leads_ref             ON leads (ref, received_at);
CREATE INDEX leads_source_type     ON leads (source_type, received_at);
CREATE INDEX leads_wa_id           ON leads (wa_id, received_at);
CREATE INDEX leads_user_id         ON leads (user_id, received_at);
CREATE INDEX leads_phone_number_id ON leads (phone_number_id, received_at);
CREATE INDEX leads_waba_id         ON leads (waba_id, received_at);
