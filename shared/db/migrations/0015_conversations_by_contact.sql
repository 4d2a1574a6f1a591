-- The API's conversation listing filtered by phone (GET /api/v1/conversations?phone=...) finds the contact
-- by its unique phone, then its conversations newest first. Only live conversations were indexed by their
-- contact (conversations_live), so a contact's history, closed ones included, was a read of every
-- conversation ever held. (contact_id, id) answers it and its pages (id < cursor) from the index.
--
-- A plain build: it holds writes to conversations (inbound routing waits, nothing is lost) for one pass
-- over the table; the runner waits at most its lock_timeout for the lock and tries again.
CREATE INDEX conversations_contact ON conversations (contact_id, id);
