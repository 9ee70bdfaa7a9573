-- A message ThingsBoard refuses (a 4xx other than 401) is tried a bounded number of times
-- (RECSYS_OUTBOX_MAX_ATTEMPTS), then marked failed with its reason instead of staying pending
-- for ever; failed messages are shown by the health checks and the report, and never sent again.
ALTER TABLE ops.telemetry_outbox ADD COLUMN failed_at timestamptz;
DROP INDEX ops.telemetry_outbox_pending;
CREATE INDEX telemetry_outbox_pending ON ops.telemetry_outbox (outbox_id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
