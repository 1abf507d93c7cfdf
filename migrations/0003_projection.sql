-- The projector's watermark: the last delivery-log id whose leads are in this database. It is
-- updated in the same transaction as the leads it covers. Raw deliveries now live in the
-- delivery log (a file of their own); rows left in `events` by earlier versions are moved there
-- once at start-up.
CREATE TABLE projection (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    watermark INTEGER NOT NULL
);
INSERT INTO projection (id, watermark) VALUES (1, 0);
