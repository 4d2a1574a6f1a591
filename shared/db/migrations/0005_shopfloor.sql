-- The shop-floor host model the shopfloor flow pack acts on (shared/flows/packs/shopfloor.toml).
-- Defect reports and maintenance tickets are flow_records (kind 'defect' / 'maintenance', references
-- DEF-... / MAINT-...), so every pack's records live in one table with one idempotency rule.

CREATE TABLE orders (
    id            bigserial PRIMARY KEY,
    number        text NOT NULL UNIQUE,          -- ORD-12345, upper case
    customer      text NOT NULL,
    product       text,
    quantity      integer CHECK (quantity IS NULL OR quantity > 0),
    status        text NOT NULL DEFAULT 'IN PRODUCTION',   -- OPEN, IN PRODUCTION, ON HOLD, COMPLETED, SHIPPED
    progress      integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    expected_date date,
    sla_due_at    timestamptz,                   -- when the customer was promised the order
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE machines (
    id          text PRIMARY KEY,                -- MACH-001, upper case
    name        text NOT NULL,
    line        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- "My open tickets" and SLA sweeps.
CREATE INDEX flow_records_contact ON flow_records (contact_id, status, created_at);
CREATE INDEX flow_records_kind_due ON flow_records (kind, status, due_at);
