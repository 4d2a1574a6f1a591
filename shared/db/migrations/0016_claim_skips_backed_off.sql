-- wapipe: no-transaction
-- notify's batch claim (shared/db/sending.py) walks the queued outbound messages oldest first until it has
-- its batch, passing over those backed off to a later send_after (a provider's outage, pacing waits). It
-- read each of those from the table to see its send_after. This index holds send_after beside the id
-- (NULL, due now, as -infinity), so the walk passes over them inside the index. Measured with
-- `python -m tests.bench.claim_scan` (1M sent messages, 100,000 queued ones backed off ahead of 400 due,
-- a claim of 160; EXPLAIN ANALYZE, 7 runs each, medians): the claim's scan 12.4-14.0 ms before, 1.3-2.3 ms
-- after; the whole statement 14.8-17.0 ms before, 3.9-5.0 ms after. With nothing backed off ahead, both
-- 0.3 ms (statement 3 ms).
--
-- It replaces messages_outbound_queued (0006), which indexes the same rows: offered both, the planner kept
-- walking the old one, and a write to a queued message keeps one such index up to date, as before, not
-- two (the bench's insert, claim and release of 20,000 queued messages cost the same, within its noise of
-- ~2 us a message, with either index). A claim of the release before walks this one as it did the old one.
-- Built concurrently, so writes to messages go on meanwhile (see shared/db/migrate.py).
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_outbound_queued_due
    ON messages (id, COALESCE(send_after, '-infinity'::timestamptz))
    WHERE direction = 'out' AND status = 'queued';
DROP INDEX CONCURRENTLY IF EXISTS messages_outbound_queued;
