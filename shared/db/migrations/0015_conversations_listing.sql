-- wapipe: no-transaction
-- The API's conversation listing (GET /api/v1/conversations), newest first, filtered by phone or provider:
-- - by phone it finds the contact by its unique phone, then its conversations. Only live conversations were
--   indexed by their contact (conversations_live), so a contact's history, closed ones included, was a read
--   of every conversation ever held;
-- - by provider it walked every conversation newest first, keeping that provider's: all of them read for a
--   provider with few (the one a deployment moved away from).
-- (contact_id, id) and (provider, id) answer each, and its pages (id < cursor), from the index.
--
-- Built concurrently, so inbound routing goes on writing conversations meanwhile (see
-- shared/db/migrate.py).
CREATE INDEX CONCURRENTLY IF NOT EXISTS conversations_contact ON conversations (contact_id, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS conversations_provider ON conversations (provider, id);
