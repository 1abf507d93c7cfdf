-- A click id is an opaque token of about a hundred characters, random to its last one, and every
-- lead has its own: indexing it whole made `leads_ctwa_clid` the largest of the random-keyed
-- indexes, and the projector dirtied (and the WAL and checkpoint wrote) about one of its pages per
-- lead. Indexing its last 16 characters finds the same rows (a look-up also compares the whole
-- value) with entries a fifth of the size. On production-shaped load at 64 connections: +10-15%
-- deliveries/s, half the projection lag, ~15% fewer bytes written per delivery, ~10 MB less RSS.
DROP INDEX leads_ctwa_clid;
CREATE INDEX leads_ctwa_clid_tail ON leads (substr(ctwa_clid, -16), received_at);
