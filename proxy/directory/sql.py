"""The directory's SQL, one statement per operation (writes carry their audit row in a CTE).

Every name is schema-qualified (`creditgate.`) so the pool needs no search_path. Listings fetch
`limit + 1` rows ordered by id; the extra row only says whether there is more.
"""

from __future__ import annotations

ORG = "o.id, o.name, o.tier, o.suspended, o.created_at"
USER = "u.id, u.email, u.name, u.created_at"
KEY = (
    "k.id, k.user_id, k.org_id, k.name, k.key_prefix AS prefix, k.created_at, k.revoked_at,"
    " k.revoked_at IS NOT NULL AS revoked, k.models, k.routes, k.read_only, k.limit_millicredits, k.limit_period,"
    # the key's spend this period in its bound org (key_usage, 0008_scoped_keys.sql), shaped by pg.key_row
    " (SELECT array[ku.posted, ku.pending] FROM creditgate.key_usage ku WHERE ku.org_id = k.org_id AND ku.key_id = k.id"
    "   AND ku.period_start = creditgate.period_start(k.limit_period, creditgate.now())) AS spent,"
    " creditgate.period_end(k.limit_period, creditgate.now()) AS resets_at"
)
PROVIDER_KEY = "p.provider, p.scope, p.last4, p.enabled, p.created_at, p.updated_at"

API_KEY = """
SELECT id, user_id, org_id, revoked_at IS NOT NULL AS revoked, models, routes, read_only
  FROM creditgate.api_keys WHERE key_hash = $1
"""

MEMBERSHIPS = """
SELECT m.org_id, m.user_id, m.role, m.is_default, m.power_level, m.suspended AS member_suspended,
       o.tier AS org_tier, o.suspended AS org_suspended
  FROM creditgate.memberships m JOIN creditgate.orgs o ON o.id = m.org_id
 WHERE m.user_id = $1
 ORDER BY m.is_default DESC, m.created_at, m.org_id
"""

# the member's own key first, then the org's (CONTRACT.md: a member's key beats the org's)
PROVIDER_KEYS = """
SELECT provider, scope, ciphertext, enabled FROM creditgate.provider_keys
 WHERE org_id = $1 AND provider = $3
   AND ((scope = 'user' AND owner_id = $2) OR (scope = 'org' AND owner_id = $1))
 ORDER BY scope = 'org'
"""

CREATE_ORG = f"""
WITH o AS (INSERT INTO creditgate.orgs (id, name, tier) VALUES ($1, $2, $3) RETURNING *),
     a AS (INSERT INTO creditgate.admin_audit (actor, action, org_id, target, detail)
           SELECT $4, 'org.create', o.id, o.id, jsonb_build_object('name', o.name, 'tier', o.tier) FROM o)
SELECT {ORG} FROM o
"""

LIST_ORGS = f"""
SELECT {ORG} FROM creditgate.orgs o WHERE $1::text IS NULL OR o.id > $1 ORDER BY o.id LIMIT $2
"""

GET_ORG = f"""
SELECT {ORG}, coalesce((
         SELECT json_agg(json_build_object(
                  'user_id', m.user_id, 'email', u.email, 'name', u.name, 'role', m.role,
                  'allocation_millicredits', m.allocation_millicredits, 'allocation_period', m.allocation_period,
                  'default', m.is_default, 'power_level', m.power_level, 'suspended', m.suspended,
                  'suspended_by', m.suspended_by, 'created_at', m.created_at, 'updated_at', m.updated_at)
                  ORDER BY m.user_id)
           FROM creditgate.memberships m JOIN creditgate.users u ON u.id = m.user_id
          WHERE m.org_id = o.id), '[]') AS members
  FROM creditgate.orgs o WHERE o.id = $1
"""

UPDATE_ORG = f"""
WITH o AS (UPDATE creditgate.orgs SET tier = coalesce($2, tier), suspended = coalesce($3, suspended)
            WHERE id = $1 RETURNING *),
     a AS (INSERT INTO creditgate.admin_audit (actor, action, org_id, target, detail)
           SELECT $4, 'org.update', o.id, o.id,
                  jsonb_strip_nulls(jsonb_build_object('tier', $2::text, 'suspended', $3::boolean)) FROM o)
SELECT {ORG} FROM o
"""

CREATE_USER = f"""
WITH u AS (INSERT INTO creditgate.users (id, email, name) VALUES ($1, $2, $3) RETURNING *),
     a AS (INSERT INTO creditgate.admin_audit (actor, action, target, detail)
           SELECT $4, 'user.create', u.id, jsonb_build_object('email', u.email) FROM u)
SELECT {USER} FROM u
"""

LIST_USERS = f"""
SELECT {USER} FROM creditgate.users u
 WHERE ($1::text IS NULL OR u.id > $1) AND ($3::text IS NULL OR u.email = $3)
 ORDER BY u.id LIMIT $2
"""

MEMBER = """org_id, user_id, role, allocation_millicredits, allocation_period, is_default AS "default",
       power_level, suspended, suspended_by, created_at, updated_at"""

# the operator's lane: upsert, may set the default org and lift any suspension
PUT_MEMBER = f"SELECT {MEMBER} FROM creditgate.put_member($1, $2, $3::jsonb, $4)"

# an org admin's lane: an existing member of their org only (proxy/db/migrations/0004_admin_lanes.sql)
UPDATE_MEMBER = f"SELECT {MEMBER} FROM creditgate.update_member($1, $2, $3::jsonb, $4)"

DELETE_MEMBER = """
WITH d AS (DELETE FROM creditgate.memberships WHERE org_id = $1 AND user_id = $2 RETURNING org_id, user_id, role),
     a AS (INSERT INTO creditgate.admin_audit (actor, action, org_id, target, detail)
           SELECT $3, 'member.delete', d.org_id, d.user_id, jsonb_build_object('role', d.role) FROM d)
SELECT count(*) FROM d
"""

# one statement: the key is inserted only for a known user who is a member of the bound org (if any);
# the flags say which check failed when nothing was inserted
CREATE_KEY = f"""
WITH k AS (INSERT INTO creditgate.api_keys (id, user_id, org_id, name, key_hash, key_prefix, models, routes,
                                            read_only, limit_millicredits, limit_period)
           SELECT $1, u.id, $3, $4, $5, $6, $8, $9, $10, $11, $12 FROM creditgate.users u
            WHERE u.id = $2
              AND ($3::text IS NULL OR EXISTS (
                    SELECT 1 FROM creditgate.memberships WHERE org_id = $3 AND user_id = $2))
           RETURNING *),
     a AS (INSERT INTO creditgate.admin_audit (actor, action, org_id, target, detail)
           SELECT $7, 'key.create', k.org_id, k.id, jsonb_build_object(
             'user_id', k.user_id, 'name', k.name, 'models', k.models, 'routes', k.routes, 'read_only', k.read_only,
             'limit_millicredits', k.limit_millicredits, 'limit_period', k.limit_period) FROM k)
SELECT EXISTS (SELECT 1 FROM creditgate.users WHERE id = $2) AS user_exists,
       $3::text IS NULL OR EXISTS (SELECT 1 FROM creditgate.orgs WHERE id = $3) AS org_exists,
       {KEY}
  FROM (SELECT 1) AS one LEFT JOIN k ON true
"""

GET_KEY = f"SELECT {KEY} FROM creditgate.api_keys k WHERE k.id = $1"

LIST_KEYS = f"""
SELECT {KEY} FROM creditgate.api_keys k
 WHERE ($1::text IS NULL OR k.user_id = $1) AND ($2::text IS NULL OR k.org_id = $2)
   AND ($3::text IS NULL OR k.id > $3)
 ORDER BY k.id LIMIT $4
"""

# PATCH /admin/keys/{id}: only the fields named in $3 (a JSON object) change; the audit row says what they
# became. Returns the hash, to drop the key from every replica's cache.
UPDATE_KEY = """
WITH k AS (UPDATE creditgate.api_keys SET
             name = CASE WHEN $3::jsonb ? 'name' THEN $3->>'name' ELSE name END,
             models = CASE WHEN $3::jsonb ? 'models' THEN $4::text[] ELSE models END,
             routes = CASE WHEN $3::jsonb ? 'routes' THEN $5::text[] ELSE routes END,
             read_only = CASE WHEN $3::jsonb ? 'read_only' THEN ($3->>'read_only')::boolean ELSE read_only END,
             limit_millicredits = CASE WHEN $3::jsonb ? 'limit_millicredits'
                                       THEN ($3->>'limit_millicredits')::bigint ELSE limit_millicredits END,
             limit_period = CASE WHEN $3::jsonb ? 'limit_period' THEN $3->>'limit_period' ELSE limit_period END,
             updated_at = now()
            WHERE id = $1
           RETURNING id, org_id, key_hash),
     a AS (INSERT INTO creditgate.admin_audit (actor, action, org_id, target, detail)
           SELECT $2, 'key.update', k.org_id, k.id, $3::jsonb FROM k)
SELECT key_hash FROM k
"""

# revoking twice keeps the first revocation time and still returns the hash (to broadcast again)
REVOKE_KEY = """
WITH k AS (UPDATE creditgate.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
           RETURNING id, org_id, key_hash),
     a AS (INSERT INTO creditgate.admin_audit (actor, action, org_id, target)
           SELECT $2, 'key.revoke', k.org_id, k.id FROM k)
SELECT key_hash FROM k
"""

# newest first by the bigint id; the cursor is the last row's id as decimal text. (Selecting
# `id::text AS id` made ORDER BY id sort the text, while the cursor compared numbers: issue 7.)
LIST_AUDIT = """
SELECT a.id, a.actor, a.action, a.org_id, a.target, a.detail::text AS detail, a.created_at
  FROM creditgate.admin_audit a
 WHERE ($1::text IS NULL OR a.org_id = $1) AND ($2::bigint IS NULL OR a.id < $2)
 ORDER BY a.id DESC LIMIT $3
"""

AUDIT = """
INSERT INTO creditgate.admin_audit (actor, action, org_id, target, detail) VALUES ($1, $2, $3, $4, $5::jsonb)
"""

PUT_PROVIDER_KEY = f"""
INSERT INTO creditgate.provider_keys AS p (org_id, scope, owner_id, provider, ciphertext, last4)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (org_id, scope, owner_id, provider) DO UPDATE
   SET ciphertext = excluded.ciphertext, last4 = excluded.last4, enabled = true, updated_at = now()
RETURNING {PROVIDER_KEY}
"""

LIST_PROVIDER_KEYS = f"""
SELECT {PROVIDER_KEY} FROM creditgate.provider_keys p
 WHERE p.org_id = $1 AND ((p.scope = 'user' AND p.owner_id = $2) OR (p.scope = 'org' AND p.owner_id = $1))
 ORDER BY p.provider, p.scope = 'org'
"""

DELETE_PROVIDER_KEY = """
DELETE FROM creditgate.provider_keys WHERE org_id = $1 AND scope = $2 AND owner_id = $3 AND provider = $4
RETURNING provider
"""

TOGGLE_PROVIDER_KEY = f"""
UPDATE creditgate.provider_keys AS p SET enabled = $5, updated_at = now()
 WHERE org_id = $1 AND scope = $2 AND owner_id = $3 AND provider = $4
RETURNING {PROVIDER_KEY}
"""
