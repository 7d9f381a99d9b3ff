-- Admin API support: listing keys by org, and the membership upsert as one atomic, audited call.
SET LOCAL search_path = creditgate;

CREATE INDEX api_keys_org ON api_keys (org_id, id);

-- Upsert a membership. Only the fields present in p_fields change an existing row (a new row takes
-- the column defaults for the rest). Making it the default clears the user's other default in the
-- same transaction, under a lock on the user row, so two concurrent "default" changes for one user
-- serialize instead of failing on memberships_one_default. Unknown org or user fails on the foreign
-- keys (memberships_org_id_fkey / memberships_user_id_fkey). Audited with its actor.
CREATE FUNCTION put_member(p_org text, p_user text, p_fields jsonb, p_actor text)
RETURNS memberships LANGUAGE plpgsql SET search_path = creditgate AS $$
DECLARE
  m memberships;
BEGIN
  PERFORM 1 FROM users WHERE id = p_user FOR UPDATE;
  IF coalesce((p_fields->>'default')::boolean, false) THEN
    UPDATE memberships SET is_default = false, updated_at = now()
     WHERE user_id = p_user AND org_id <> p_org AND is_default;
  END IF;
  INSERT INTO memberships AS cur
         (org_id, user_id, role, allocation_millicredits, allocation_period, is_default, power_level, suspended)
  VALUES (p_org, p_user,
          coalesce(p_fields->>'role', 'member'),
          (p_fields->>'allocation_millicredits')::bigint,
          coalesce(p_fields->>'allocation_period', 'none'),
          coalesce((p_fields->>'default')::boolean, false),
          p_fields->>'power_level',
          coalesce((p_fields->>'suspended')::boolean, false))
  ON CONFLICT (org_id, user_id) DO UPDATE SET
    role = CASE WHEN p_fields ? 'role' THEN excluded.role ELSE cur.role END,
    allocation_millicredits = CASE WHEN p_fields ? 'allocation_millicredits'
                                   THEN excluded.allocation_millicredits ELSE cur.allocation_millicredits END,
    allocation_period = CASE WHEN p_fields ? 'allocation_period'
                             THEN excluded.allocation_period ELSE cur.allocation_period END,
    is_default = CASE WHEN p_fields ? 'default' THEN excluded.is_default ELSE cur.is_default END,
    power_level = CASE WHEN p_fields ? 'power_level' THEN excluded.power_level ELSE cur.power_level END,
    suspended = CASE WHEN p_fields ? 'suspended' THEN excluded.suspended ELSE cur.suspended END,
    updated_at = now()
  RETURNING * INTO m;
  INSERT INTO admin_audit (actor, action, org_id, target, detail)
  VALUES (p_actor, 'member.put', p_org, p_user, p_fields);
  RETURN m;
END
$$;
