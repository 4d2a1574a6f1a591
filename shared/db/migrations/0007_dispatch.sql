-- Per-conversation order of the handler stages (shared/db/turns.py, workers/ordering.py).
--
-- dispatched_at: when inbound.route handed the message to a handler stage (set before it publishes the
--   handler's task, so a handler never runs before its dispatch is recorded). A message the router only
--   stored (duplicate, rate-limited, opted out, handed off) never gets one. Cleared when the handler
--   gave up on it for good (its task failed), so it stops holding the conversation's turn.
-- dispatched_to: the handler task it was dispatched to (flows.step waits only for other stages' messages:
--   it answers its own in order itself).
-- With handled_at (set by the last hop of the handler): a message dispatched and not yet handled holds
-- the turn; a later message of its conversation waits for it.
ALTER TABLE messages ADD COLUMN dispatched_at timestamptz;
ALTER TABLE messages ADD COLUMN dispatched_to text;

-- The turn check's scan: the few inbound messages of a conversation still owed an answer, or not yet
-- routed. Small by construction (rows leave it as they are handled).
CREATE INDEX messages_turn ON messages (conversation_id, id)
    WHERE direction = 'in' AND handled_at IS NULL AND (dispatched_at IS NOT NULL OR routed_at IS NULL);
