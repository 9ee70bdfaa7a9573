-- A message's identity (e.g. "<sweep run id>:telemetry"): a report run again for the same
-- sweep queues nothing new, so nothing is sent twice. NULL keys are never deduplicated.
ALTER TABLE ops.telemetry_outbox ADD COLUMN message_key text;
CREATE UNIQUE INDEX telemetry_outbox_message_key ON ops.telemetry_outbox (message_key);
