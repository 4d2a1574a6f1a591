-- Contacts stored in WhatsApp's older form of a Mexican mobile (+52 1 and ten digits) or a Brazilian one
-- (+55, the area, eight digits from 6 to 9: registered before the ninth digit) take the numbering plan's
-- form, which the code now gives every number that reaches us (shared/phone.py, _plan_form). Left as
-- they were, the next message from such a contact would start a second contact in the plan's form,
-- without the first one's opt-out, and a user linked by the plan's form would never match the old one.
--
-- The patterns are _plan_form's: the Mexican ten digits start with 2 to 9 (no area code starts with 0 or
-- 1); a Brazilian number is a mobile when its eight digits start with 6 to 9 (landlines are 2 to 5).
--
-- Where the plan's form is already another contact (the same person reached us both ways), the old row
-- is merged into it: an opt-out on either holds, the latest inbound time and any BSUID or name are kept,
-- and the conversations, messages and flow records move to it. Two live conversations on one business
-- number cannot both stay live: the one written to last does, the other is closed.

CREATE TEMP TABLE plan_forms ON COMMIT DROP AS
SELECT old.id AS old_id, old.bsuid AS old_bsuid, form.plan_phone, kept.id AS kept_id
FROM contacts old
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN old.phone ~ '^\+521[2-9][0-9]{9}$' THEN '+52' || substr(old.phone, 5)
        ELSE '+55' || substr(old.phone, 4, 2) || '9' || substr(old.phone, 6)
    END AS plan_phone
) form
LEFT JOIN contacts kept ON kept.phone = form.plan_phone
WHERE old.phone ~ '^\+521[2-9][0-9]{9}$' OR old.phone ~ '^\+55[1-9][1-9][6-9][0-9]{7}$';

-- Nobody has the plan's form yet: the contact takes it.
UPDATE contacts c SET phone = p.plan_phone, updated_at = now()
FROM plan_forms p
WHERE c.id = p.old_id AND p.kept_id IS NULL;

-- The same person twice: merge the old row into the one in the plan's form.
UPDATE contacts old SET bsuid = NULL
FROM plan_forms p
WHERE old.id = p.old_id AND p.kept_id IS NOT NULL;

UPDATE contacts kept SET
    opted_out = kept.opted_out OR old.opted_out,
    opted_out_at = CASE WHEN kept.opted_out OR old.opted_out
                        THEN LEAST(kept.opted_out_at, old.opted_out_at) END,
    last_inbound_at = GREATEST(kept.last_inbound_at, old.last_inbound_at),
    bsuid = COALESCE(kept.bsuid, p.old_bsuid),
    profile_name = COALESCE(kept.profile_name, old.profile_name),
    updated_at = now()
FROM plan_forms p
JOIN contacts old ON old.id = p.old_id
WHERE kept.id = p.kept_id;

UPDATE conversations earlier SET status = 'closed', closed_at = now()
FROM plan_forms p, conversations later
WHERE p.kept_id IS NOT NULL
  AND earlier.contact_id IN (p.old_id, p.kept_id) AND later.contact_id IN (p.old_id, p.kept_id)
  AND earlier.contact_id <> later.contact_id
  AND earlier.provider = later.provider AND earlier.business_number = later.business_number
  AND earlier.status <> 'closed' AND later.status <> 'closed'
  AND (earlier.last_message_at, earlier.id) < (later.last_message_at, later.id);

UPDATE conversations c SET contact_id = p.kept_id
FROM plan_forms p
WHERE c.contact_id = p.old_id AND p.kept_id IS NOT NULL;

UPDATE messages m SET contact_id = p.kept_id
FROM plan_forms p
WHERE m.contact_id = p.old_id AND p.kept_id IS NOT NULL;

UPDATE flow_records r SET contact_id = p.kept_id
FROM plan_forms p
WHERE r.contact_id = p.old_id AND p.kept_id IS NOT NULL;

DELETE FROM contacts c
USING plan_forms p
WHERE c.id = p.old_id AND p.kept_id IS NOT NULL;
