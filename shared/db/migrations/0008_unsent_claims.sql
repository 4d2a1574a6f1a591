-- A notify batch's claim remembers which of its messages have not been put to the provider yet, so a
-- worker that dies mid-batch leaves proof of what it never sent (workers/notify.py).
--
-- unsent_claim: the transaction id of the batch claim that holds this message ('sending') while its send
--   has not been booked for the provider call; cleared, in one conditional UPDATE per booking, before any
--   of those calls is made. A claim left past its lease with it still set never reached the provider and
--   goes back to the queue; one with it cleared may have, and fails as outcome_unknown. NULL for rows
--   claimed before this migration and by the single-message send (its call follows its claim at once),
--   so those stay "unknown" too: nothing is ever presumed unsent without this proof.
ALTER TABLE messages ADD COLUMN unsent_claim bigint;
