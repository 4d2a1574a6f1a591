-- The whole data model of ARCHITECTURE.md, so later features add to it rather than reshape it.
-- Phone numbers are E.164 text; times are timestamptz; rows that providers identify carry their ids
-- under unique constraints, which is what makes redelivered webhooks and tasks produce one effect.

CREATE TABLE contacts (
    id            bigserial PRIMARY KEY,
    phone         text UNIQUE,                -- E.164; absent for users Meta identifies only by BSUID
    bsuid         text UNIQUE,                -- Meta business-scoped user id
    profile_name  text,
    opted_out     boolean NOT NULL DEFAULT false,
    opted_out_at  timestamptz,
    last_inbound_at timestamptz,              -- opens WhatsApp's 24-hour customer service window
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (phone IS NOT NULL OR bsuid IS NOT NULL)
);

-- Users of the host application (its UUIDs), recorded on first sight.
CREATE TABLE users (
    id          uuid PRIMARY KEY,
    display_name text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A verified WhatsApp number per user; a number belongs to at most one user.
CREATE TABLE user_links (
    user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    phone       text NOT NULL UNIQUE,
    linked_at   timestamptz NOT NULL DEFAULT now()
);

-- One pending code per user; a new code replaces the old. Only a hash is stored.
CREATE TABLE verification_codes (
    user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    phone       text NOT NULL,
    code_hash   bytea NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX verification_codes_phone ON verification_codes (phone);
CREATE INDEX verification_codes_expires ON verification_codes (expires_at);

CREATE TABLE workspaces (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workspace_members (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text NOT NULL DEFAULT 'member',
    PRIMARY KEY (workspace_id, user_id)
);

CREATE TABLE projects (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text NOT NULL,
    archived     boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

CREATE TABLE tasks (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id      uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    title           text NOT NULL,
    status          text NOT NULL DEFAULT 'open',
    priority        text NOT NULL DEFAULT 'medium',
    estimated_hours numeric(8, 2),
    due_date        date,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_project ON tasks (project_id);

CREATE TABLE conversations (
    id               bigserial PRIMARY KEY,
    contact_id       bigint NOT NULL REFERENCES contacts (id),
    provider         text NOT NULL,
    business_number  text NOT NULL,           -- our number (E.164) or Meta phone_number_id
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'handoff', 'closed')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    last_message_at  timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz
);
-- At most one live conversation per contact and business number.
CREATE UNIQUE INDEX conversations_live ON conversations (contact_id, provider, business_number)
    WHERE status <> 'closed';
CREATE INDEX conversations_last_message ON conversations (status, last_message_at);

CREATE TABLE messages (
    id                  bigserial PRIMARY KEY,
    conversation_id     bigint REFERENCES conversations (id),
    contact_id          bigint REFERENCES contacts (id),
    direction           text NOT NULL CHECK (direction IN ('in', 'out')),
    provider            text NOT NULL,
    provider_message_id text,                  -- MessageSid / wamid; unique per provider
    idempotency_key     text UNIQUE,           -- outbound: reply:<inbound id> or the API caller's key
    request_hash        text,                  -- outbound via API: what the key was first used with
    type                text NOT NULL DEFAULT 'text',
    body                text,
    payload             jsonb NOT NULL DEFAULT '{}'::jsonb,   -- the typed content (media, interactive, template, raw)
    media               jsonb,
    status              text NOT NULL DEFAULT 'queued',
    error_code          text,
    error_message       text,
    attempts            integer NOT NULL DEFAULT 0,
    handled_at          timestamptz,           -- inbound: a handler has answered it
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_message_id)
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
CREATE INDEX messages_contact ON messages (contact_id, id);
CREATE INDEX messages_created ON messages (created_at);

-- The timeline of a message's delivery status, as receipts arrive (in any order).
CREATE TABLE message_events (
    id          bigserial PRIMARY KEY,
    message_id  bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    status      text NOT NULL,
    error_code  text,
    detail      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_events_message ON message_events (message_id, id);

CREATE TABLE proposals (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_message_id     bigint NOT NULL UNIQUE REFERENCES messages (id),
    user_id               uuid REFERENCES users (id),
    project_id            uuid REFERENCES projects (id),
    summary               text NOT NULL,
    total_estimated_hours numeric(8, 2),
    confidence            real,
    parser                text NOT NULL,       -- offline, or the model's name
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE proposal_items (
    id              bigserial PRIMARY KEY,
    proposal_id     uuid NOT NULL REFERENCES proposals (id) ON DELETE CASCADE,
    position        integer NOT NULL,
    type            text NOT NULL DEFAULT 'task',
    title           text NOT NULL,
    description     text,
    estimated_hours numeric(8, 2),
    due_date        date,
    priority        text NOT NULL DEFAULT 'medium',
    UNIQUE (proposal_id, position)
);

-- What menu flows create (defect reports, maintenance tickets, ...): one row per finished form.
CREATE TABLE flow_records (
    id              bigserial PRIMARY KEY,
    reference       text NOT NULL UNIQUE,
    flow            text NOT NULL,
    kind            text NOT NULL,
    contact_id      bigint REFERENCES contacts (id),
    conversation_id bigint REFERENCES conversations (id),
    source_message_id bigint UNIQUE REFERENCES messages (id),
    data            jsonb NOT NULL DEFAULT '{}'::jsonb,
    status          text NOT NULL DEFAULT 'open',
    due_at          timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE assistant_configs (
    business_number text PRIMARY KEY,
    system_prompt   text NOT NULL,
    model           text,
    max_tokens      integer NOT NULL DEFAULT 300,
    temperature     real NOT NULL DEFAULT 0.3,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Raw webhook log, kept for a retention period, for audits and replays.
CREATE TABLE webhook_events (
    id           bigserial PRIMARY KEY,
    provider     text NOT NULL,
    event_key    text,
    kind         text,
    body         jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_received ON webhook_events (received_at);

CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    task_name   text NOT NULL,
    message_id  bigint REFERENCES messages (id),
    payload     jsonb NOT NULL,
    error       text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz
);
CREATE INDEX dead_letters_pending ON dead_letters (created_at) WHERE replayed_at IS NULL;
