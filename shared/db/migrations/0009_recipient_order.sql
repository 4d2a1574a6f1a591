-- notify hands a recipient's messages to the provider one at a time, in the order they were stored: a
-- claim skips a message while an earlier one to the same contact is being sent or is queued and due
-- (shared/db/sending.py). This index answers "is anything earlier pending for this contact?" from the
-- few pending rows alone, however long the contact's history.
CREATE INDEX messages_outbound_pending_contact ON messages (contact_id, id)
    WHERE direction = 'out' AND status IN ('queued', 'sending');
