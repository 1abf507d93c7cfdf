-- The highest forwarding-delivery and conversion-event ids given so far, as an erasure records
-- them before it deletes rows. New rows are numbered above them (and above every stored row):
-- SQLite alone gives the highest id again once its row is gone, so `GET /v1/deliveries/{id}`
-- (or `/v1/conversions`) could name another person's row than it did before the erasure.
ALTER TABLE projection ADD COLUMN delivery_ids_taken INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projection ADD COLUMN conversion_ids_taken INTEGER NOT NULL DEFAULT 0;
