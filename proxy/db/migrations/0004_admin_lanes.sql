-- Admin lanes (issue 7, CONTRACT.md "Operator's admin API"): the operator adds members, sets their
-- default org and lifts any suspension; an org admin changes existing members of their own org only,
-- may suspend them, and may lift only a suspension an org admin set. Nothing in the org admin's lane
-- touches another org's rows; every change, including a default cleared in another org, is audited
-- in the org whose row changed.
SET LOCAL search_path = creditgate;

-- Who set the suspension: 'operator' or 'org_admin'; NULL while not suspended.
ALTER TABLE memberships ADD COLUMN suspended_by text CHECK (suspended_by IN ('operator', 'org_admin'));
-- suspensions from before this column cannot say who set them: they are the operator's (fail closed)
UPDATE memberships SET suspended_by = 'operator' WHERE suspended;

-- The operator's lane: upsert a membership. Only the fields present in p_fields change an existing
-- row (a new row takes the column defaults for the rest). Making it the default clears the user's
-- default in any other org in the same transaction, under a lock on the user row (two concurrent
-- "default" changes for one user serialize), and records that in each org whose row changed. Unknown
-- org or user fails on the foreign keys (memberships_org_id_fkey / memberships_user_id_fkey).
CREATE OR REPLACE FUNCTION put_member(p_org text, p_user text, p_fields jsonb, p_actor text)
RETURNS memberships LANGUAGE plpgsql SET search_path = creditgate AS $$
DECLARE
  m memberships;
  suspend boolean := coalesce((p_fields->>'suspended')::boolean, false);
BEGIN
  PERFORM 1 FROM users WHERE id = p_user FOR UPDATE;
  IF coalesce((p_fields->>'default')::boolean, false) THEN
    WITH cleared AS (
      UPDATE memberships SET is_default = false, updated_at = now()
       WHERE user_id = p_user AND org_id <> p_org AND is_default
      RETURNING org_id)
    INSERT INTO admin_audit (actor, action, org_id, target, detail)
    SELECT p_actor, 'member.default_cleared', cleared.org_id, p_user, '{"default": false}'::jsonb FROM cleared;
  END IF;
  INSERT INTO memberships AS cur
         (org_id, user_id, role, allocation_millicredits, allocation_period, is_default, power_level, suspended,
          suspended_by)
  VALUES (p_org, p_user,
          coalesce(p_fields->>'role', 'member'),
          (p_fields->>'allocation_millicredits')::bigint,
          coalesce(p_fields->>'allocation_period', 'none'),
          coalesce((p_fields->>'default')::boolean, false),
          p_fields->>'power_level',
          suspend,
          CASE WHEN suspend THEN 'operator' END)
  ON CONFLICT (org_id, user_id) DO UPDATE SET
    role = CASE WHEN p_fields ? 'role' THEN excluded.role ELSE cur.role END,
    allocation_millicredits = CASE WHEN p_fields ? 'allocation_millicredits'
                                   THEN excluded.allocation_millicredits ELSE cur.allocation_millicredits END,
    allocation_period = CASE WHEN p_fields ? 'allocation_period'
                             THEN excluded.allocation_period ELSE cur.allocation_period END,
    is_default = CASE WHEN p_fields ? 'default' THEN excluded.is_default ELSE cur.is_default END,
    power_level = CASE WHEN p_fields ? 'power_level' THEN excluded.power_level ELSE cur.power_level END,
    suspended = CASE WHEN p_fields ? 'suspended' THEN excluded.suspended ELSE cur.suspended END,
    -- the operator suspending takes the suspension over, so no org admin can lift it
    suspended_by = CASE WHEN p_fields ? 'suspended' THEN excluded.suspended_by ELSE cur.suspended_by END,
    updated_at = now()
  RETURNING * INTO m;
  INSERT INTO admin_audit (actor, action, org_id, target, detail)
  VALUES (p_actor, 'member.put', p_org, p_user, p_fields);
  RETURN m;
END
$$;

-- The org admin's lane: change an existing membership of p_org, nothing else. The acting admin
-- (p_actor, a usr_ id) must be an unsuspended admin of an unsuspended p_org. Raises CG403
-- 'operator_only' for `default`, 'suspension_is_operators' for lifting a suspension the operator set,
-- 'admin_required' when the actor is no longer an admin here; CG404 'member_not_found' when p_user is
-- not a member of p_org (whether or not the user exists anywhere).
CREATE FUNCTION update_member(p_org text, p_user text, p_fields jsonb, p_actor text)
RETURNS memberships LANGUAGE plpgsql SET search_path = creditgate AS $$
DECLARE
  m memberships;
  suspend boolean := (p_fields->>'suspended')::boolean;
BEGIN
  IF p_fields ? 'default' THEN
    RAISE EXCEPTION USING ERRCODE = 'CG403', MESSAGE = 'operator_only';
  END IF;
  PERFORM 1 FROM memberships a JOIN orgs o ON o.id = a.org_id
   WHERE a.org_id = p_org AND a.user_id = p_actor AND a.role = 'admin' AND NOT a.suspended AND NOT o.suspended;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'CG403', MESSAGE = 'admin_required';
  END IF;
  SELECT * INTO m FROM memberships WHERE org_id = p_org AND user_id = p_user FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'CG404', MESSAGE = 'member_not_found';
  END IF;
  IF suspend IS FALSE AND m.suspended AND coalesce(m.suspended_by, 'operator') <> 'org_admin' THEN
    RAISE EXCEPTION USING ERRCODE = 'CG403', MESSAGE = 'suspension_is_operators';
  END IF;
  UPDATE memberships SET
    role = CASE WHEN p_fields ? 'role' THEN p_fields->>'role' ELSE role END,
    allocation_millicredits = CASE WHEN p_fields ? 'allocation_millicredits'
                                   THEN (p_fields->>'allocation_millicredits')::bigint
                                   ELSE allocation_millicredits END,
    allocation_period = CASE WHEN p_fields ? 'allocation_period'
                             THEN p_fields->>'allocation_period' ELSE allocation_period END,
    power_level = CASE WHEN p_fields ? 'power_level' THEN p_fields->>'power_level' ELSE power_level END,
    suspended = coalesce(suspend, suspended),
    -- suspending an already suspended member keeps who did it first
    suspended_by = CASE WHEN suspend IS NULL THEN suspended_by
                        WHEN suspend AND suspended THEN coalesce(suspended_by, 'operator')
                        WHEN suspend THEN 'org_admin' END,
    updated_at = now()
   WHERE org_id = p_org AND user_id = p_user
  RETURNING * INTO m;
  INSERT INTO admin_audit (actor, action, org_id, target, detail)
  VALUES (p_actor, 'member.put', p_org, p_user, p_fields);
  RETURN m;
END
$$;
