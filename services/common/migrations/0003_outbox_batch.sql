-- Outbox rows carry the commit (batch) that wrote them, so a service deletes exactly what it
-- has published.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS batch bigint NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS outbox_service_batch ON outbox (service, batch);
