-- Directory: organizations, users, memberships (with allocations), API keys, BYOK keys, admin audit.
-- Ids are opaque prefixed strings (org_, usr_, key_). API keys are stored only as a SHA-256 hex hash.
CREATE SCHEMA IF NOT EXISTS creditgate;
SET LOCAL search_path = creditgate;

CREATE TABLE orgs (
  id          text PRIMARY KEY CHECK (id LIKE 'org\_%'),
  name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  tier        text NOT NULL,
  suspended   boolean NOT NULL DEFAULT false,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
  id          text PRIMARY KEY CHECK (id LIKE 'usr\_%'),
  email       text NOT NULL UNIQUE CHECK (position('@' in email) > 1),
  name        text NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- A member draws on the org's pool within an allocation per calendar period (UTC).
-- allocation_millicredits NULL = unlimited within the pool. Lowering it never rewrites history:
-- usage per period lives in the ledger (allocation_usage), keyed by period start.
CREATE TABLE memberships (
  org_id                   text NOT NULL REFERENCES orgs(id),
  user_id                  text NOT NULL REFERENCES users(id),
  role                     text NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'admin')),
  allocation_millicredits  bigint CHECK (allocation_millicredits >= 0),
  allocation_period        text NOT NULL DEFAULT 'none' CHECK (allocation_period IN ('none', 'day', 'week', 'month')),
  is_default               boolean NOT NULL DEFAULT false,
  power_level              text,
  suspended                boolean NOT NULL DEFAULT false,
  created_at               timestamptz NOT NULL DEFAULT now(),
  updated_at               timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);
CREATE UNIQUE INDEX memberships_one_default ON memberships (user_id) WHERE is_default;

CREATE TABLE api_keys (
  id          text PRIMARY KEY CHECK (id LIKE 'key\_%'),
  user_id     text NOT NULL REFERENCES users(id),
  org_id      text REFERENCES orgs(id),          -- bound org, optional
  name        text NOT NULL DEFAULT '',
  key_hash    text NOT NULL UNIQUE,              -- sha256 hex of the key; the key itself is never stored
  key_prefix  text NOT NULL,                     -- first characters, for display only
  created_at  timestamptz NOT NULL DEFAULT now(),
  revoked_at  timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- BYOK provider keys, Fernet-encrypted. scope 'user' (owner_id = usr_…, within org_id) or 'org'
-- (owner_id = org_id). A member's key beats the org's.
CREATE TABLE provider_keys (
  org_id      text NOT NULL REFERENCES orgs(id),
  scope       text NOT NULL CHECK (scope IN ('user', 'org')),
  owner_id    text NOT NULL,
  provider    text NOT NULL CHECK (length(provider) BETWEEN 1 AND 64),
  ciphertext  bytea NOT NULL,
  last4       text NOT NULL,
  enabled     boolean NOT NULL DEFAULT true,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, scope, owner_id, provider)
);

-- Every admin action, with who did it ('operator' or the org admin's usr_ id).
CREATE TABLE admin_audit (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  actor       text NOT NULL,
  action      text NOT NULL,
  org_id      text,
  target      text,
  detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_audit_org ON admin_audit (org_id, id);
