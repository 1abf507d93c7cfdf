-- The contact indexes of migration 0007, with ranges of 16,384 leads (`id >> 14`) instead of
-- 65,536. A projector round's inserts land in the newest range; the smaller it is, the fewer of
-- its leaves a round dirties and the more of them stay cached beside the growing `wamid` index.
-- On a database grown to 2M leads, paired runs at 64 connections (production-shaped load, same
-- hour): the projector's CPU per delivery 41 against 49 us. A look-up now searches 4x the ranges
-- (122 at 2M leads); `examples/query_bench` at 2M leads, run back to back with the build before:
-- a contact's page p99 1.0-1.4 ms against 1.3-3.2 ms. 4,096-lead ranges (`id >> 12`) made
-- look-ups miss the 5 ms bound (p99 7-10 ms) and were not taken. The index names stay, so
-- queries keep naming them.
DROP INDEX leads_wa_id_by_range;
DROP INDEX leads_user_id_by_range;
DROP INDEX leads_ctwa_clid_tail_by_range;
CREATE INDEX leads_wa_id_by_range ON leads (id >> 14, wa_id, received_at);
CREATE INDEX leads_user_id_by_range ON leads (id >> 14, user_id, received_at);
CREATE INDEX leads_ctwa_clid_tail_by_range ON leads (id >> 14, substr(ctwa_clid, -16), received_at);
