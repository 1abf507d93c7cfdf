-- The three contact keys (`wa_id`, `user_id`, the click id's tail) are random, and every lead has
-- its own: once those indexes outgrew a projector round, each new lead dirtied about one leaf of
-- each, written to the WAL, again at checkpoint, and read back on a cache miss: more than half of
-- the projector's CPU. Leading each with the lead's id range (`id >> 16`: 65,536 leads a range)
-- keeps a round's inserts inside the newest range, a few hundred leaves that stay cached and are
-- shared by many leads a round. A look-up searches every range (`store::leads` lists them: 31 at
-- 2M leads) and sorts what one contact matched. On production-shaped load at 64 connections
-- (bench/run.sh, at the commits before and with this migration): 0.86x -> 1.20x the Node peer,
-- 25.7 -> 15.3 KB written per delivery, and on a database grown to 2M leads 37.2 -> 16.9 KB;
-- a contact's page of leads stays within 3.1 ms at p99 over 2M leads (README, Performance).
DROP INDEX leads_wa_id;
DROP INDEX leads_user_id;
DROP INDEX leads_ctwa_clid_tail;
CREATE INDEX leads_wa_id_by_range ON leads (id >> 16, wa_id, received_at);
CREATE INDEX leads_user_id_by_range ON leads (id >> 16, user_id, received_at);
CREATE INDEX leads_ctwa_clid_tail_by_range ON leads (id >> 16, substr(ctwa_clid, -16), received_at);
