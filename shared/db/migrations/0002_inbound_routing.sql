-- inbound.route is safe to run twice: once a message has been routed (its handler enqueued, or the
-- decision taken to store it only), a redelivered route sees routed_at and stops.
ALTER TABLE messages ADD COLUMN routed_at timestamptz;

-- The one outbound message an opted-out contact may still receive: the confirmation of their STOP
-- (WhatsApp Business Policy: acknowledge an opt-out). notify.send refuses every other send to them.
ALTER TABLE messages ADD COLUMN bypass_opt_out boolean NOT NULL DEFAULT false;
