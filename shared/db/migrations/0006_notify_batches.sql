-- notify.send sends many messages per task pull (workers/notify.py): one task claims its own message and
-- other queued ones that are due, and the other messages' tasks then find them claimed.
--
-- send_after: not before this time (a transient failure's backoff, a pacing or Retry-After wait); a batch
--   claim skips a message until then. NULL = due now.
-- claimed_by: the message whose notify.send task made the current claim ('sending'). That task answers
--   for the outcome: if its worker dies, its redelivery (acks_late) settles every row it left 'sending'.
ALTER TABLE messages ADD COLUMN send_after timestamptz;
ALTER TABLE messages ADD COLUMN claimed_by bigint;

-- The batch claim's scan: the queued outbound messages, oldest first.
CREATE INDEX messages_outbound_queued ON messages (id) WHERE direction = 'out' AND status = 'queued';
-- The recovery sweep: claims left behind by a worker that died.
CREATE INDEX messages_outbound_sending ON messages (claimed_by, updated_at) WHERE status = 'sending';
