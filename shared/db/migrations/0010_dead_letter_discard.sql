-- An operator closes a dead letter they decided not to replay (`wapipe dlq discard`): one replay refuses
-- (its sender wrote since, or the 24-hour window closed), or an outcome_unknown send the provider's log
-- shows delivered. Without this such a letter stayed pending, and in every list and alert, for ever.
--
-- discarded_at: when it was discarded; a letter is pending while both this and replayed_at are NULL.
-- discard_reason: why, as the operator wrote it; set exactly when discarded_at is, and never blank, so
--   whoever reads the row later learns why nothing was done.
ALTER TABLE dead_letters
    ADD COLUMN discarded_at timestamptz,
    ADD COLUMN discard_reason text,
    ADD CONSTRAINT dead_letters_discarded_with_reason CHECK ((discarded_at IS NULL) = (discard_reason IS NULL)),
    ADD CONSTRAINT dead_letters_discard_reason_not_blank CHECK (btrim(discard_reason) <> ''),
    ADD CONSTRAINT dead_letters_replayed_or_discarded
        CHECK (replayed_at IS NULL OR discarded_at IS NULL);
-- The pending letters' index (0001) keeps answering "what is pending?" (list, maintenance's alert) from
-- the pending rows alone.
DROP INDEX dead_letters_pending;
CREATE INDEX dead_letters_pending ON dead_letters (created_at) WHERE replayed_at IS NULL AND discarded_at IS NULL;
