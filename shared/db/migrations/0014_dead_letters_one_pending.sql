-- At most one pending dead letter per (task, message). dead_letters.add used to look for a pending letter
-- and insert one when it found none; two failures of the same message recorded at once both found none
-- and both inserted, and `wapipe dlq replay --all` then enqueued the message twice. With this index add
-- is one INSERT ... ON CONFLICT, and the second failure gets the first letter.
--
-- A database may already hold such duplicates: the oldest pending letter of each (task, message) stays
-- pending, the later ones are discarded (0010) naming the one kept, so nothing is deleted and the
-- operator can still read them. Letters without a message (message_id NULL) are never duplicates.
--
-- Locked first, against writes only: a worker of the release before, which still looks then inserts, could
-- add a duplicate between the UPDATE and the index, whose build would then fail. Reads go on; the runner
-- waits at most its lock_timeout for the lock and tries again.
LOCK TABLE dead_letters IN SHARE ROW EXCLUSIVE MODE;

UPDATE dead_letters d
SET discarded_at = now(),
    discard_reason = 'duplicate of dead letter ' || kept.id || ', kept pending (migration 0014)'
FROM (
    SELECT task_name, message_id, min(id) AS id
    FROM dead_letters
    WHERE message_id IS NOT NULL AND replayed_at IS NULL AND discarded_at IS NULL
    GROUP BY task_name, message_id
    HAVING count(*) > 1
) kept
WHERE d.task_name = kept.task_name AND d.message_id = kept.message_id AND d.id <> kept.id
  AND d.replayed_at IS NULL AND d.discarded_at IS NULL;

CREATE UNIQUE INDEX dead_letters_one_pending ON dead_letters (task_name, message_id)
    WHERE replayed_at IS NULL AND discarded_at IS NULL;
