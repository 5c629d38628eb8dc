-- The start idempotency key of a work item: starts asked for so far (the attempt of the latest
-- key), and whether the latest start's outcome is unknown (asked, no answer yet).
ALTER TABLE ha_work ADD COLUMN start_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ha_work ADD COLUMN start_unknown BIGINT NOT NULL DEFAULT 0;
