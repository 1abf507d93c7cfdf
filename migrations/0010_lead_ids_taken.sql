-- The highest lead id given so far, as an erasure records it before it deletes leads. New leads
-- are numbered above it (and above every stored lead): SQLite alone gives the highest id again
-- once its row is gone, and an erased lead's id given to another person would repeat its
-- forwarded lead's `id`, its auto LeadSubmitted `event_id` (which Meta deduplicates on) and its
-- URL under /v1/leads.
ALTER TABLE projection ADD COLUMN lead_ids_taken INTEGER NOT NULL DEFAULT 0;
