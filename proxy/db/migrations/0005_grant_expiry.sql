-- Grants expire exactly, and overage is reported (CONTRACT.md, Money).
--
-- "A grant that expires forfeits all of it that was not spent, including what holds release after the
-- expiry." Until now expire_grants forfeited only the part of an expiring grant that was available at
-- that moment; the part in-flight holds covered came back when they resolved and stayed spendable.
--
-- Now, at expiry, the grant's unspent part (expiring credit is drawn first: the org's other live
-- credits are counted at face value) is split in two:
--   * what is available is forfeited at once, as before (one `grant_expiry` journal entry);
--   * what pending holds cover is "expired credit": recorded per hold (oldest hold first) in
--     held_expired_credit, and in total in pools.expired_held (part of pools.pending).
-- When such a hold resolves (settle, void, the sweeper's expiry; batched or alone) its expired credit
-- is forfeited except what its charge spent of it (drawn first again: a charge spends expired credit
-- before any other), in the same transaction, one `grant_expiry` journal entry per grant and hold, so
-- the pool stays the fold of its journal (invariant 4). A late charge on a voided hold, or the real
-- usage replacing the sweeper's estimate, recomputes that forfeit from the final charge (restoring the
-- forfeited credit the charge turns out to have spent, or forfeiting more), so what a hold finally
-- forfeits depends only on its final charge, not on the order events arrived in.
-- grants.forfeited is the running total a grant forfeited; grants.held_at_expiry what holds covered.
-- Per hold, not one pool-wide "pending forfeit" taken from any release: that cannot tell holds apart,
-- so it would forfeit paid credit released by a hold taken after the expiry, or the part of a hold that
-- its charge paid for with the expiring credit (tests/ledger/test_grant_expiry.py has both cases).
-- Not retroactive: credit that holds released after grants expired before this migration stays.
--
-- Concurrency: every change to an org's set of pending holds, and every read or write of
-- held_expired_credit, happens under the org's pool lock. expire_grants keeps its lock order (grants,
-- then pools) and never locks a hold row (it only inserts held_expired_credit rows, whose foreign key
-- takes KEY SHARE, which FOR NO KEY UPDATE holders do not block). Resolving an expired grant's credit
-- updates that grant's row under the pool lock; expire_grants only ever locks unexpired grants, so
-- the two never wait on each other.
--
-- Overage (a charge above its hold, or beyond the credit left, recorded as a receivable) is a defect:
-- the view overage_by_org lists it per org for `creditgate verify`.
SET LOCAL search_path = creditgate;

ALTER TABLE pools ADD COLUMN expired_held bigint NOT NULL DEFAULT 0,
  ADD CONSTRAINT pool_expired_held_within_pending CHECK (expired_held >= 0 AND expired_held <= pending);

ALTER TABLE grants ADD COLUMN held_at_expiry bigint CHECK (held_at_expiry >= 0);

CREATE TABLE held_expired_credit (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  org_id       text NOT NULL,
  hold_id      bigint NOT NULL REFERENCES holds (id),
  grant_id     bigint NOT NULL REFERENCES grants (id),
  amount       bigint NOT NULL CHECK (amount > 0),
  forfeited    bigint CHECK (forfeited >= 0 AND forfeited <= amount),  -- NULL while the hold is pending
  created_at   timestamptz NOT NULL,
  resolved_at  timestamptz,
  CHECK ((forfeited IS NULL) = (resolved_at IS NULL))
);
CREATE INDEX held_expired_credit_hold ON held_expired_credit (hold_id, id);
CREATE INDEX held_expired_credit_grant ON held_expired_credit (grant_id);

-- Only the forfeit of a row changes, and only once its hold resolved (set, then recomputed by a late
-- charge); rows are never deleted.
CREATE FUNCTION held_expired_credit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (OLD.org_id, OLD.hold_id, OLD.grant_id, OLD.amount, OLD.created_at)
     IS DISTINCT FROM (NEW.org_id, NEW.hold_id, NEW.grant_id, NEW.amount, NEW.created_at)
     OR NEW.forfeited IS NULL THEN
    RAISE EXCEPTION 'held_expired_credit %: only its forfeit may change, once its hold resolved', OLD.id;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER held_expired_credit_guard BEFORE UPDATE ON held_expired_credit
  FOR EACH ROW EXECUTE FUNCTION held_expired_credit_guard();
CREATE TRIGGER held_expired_credit_no_delete BEFORE DELETE ON held_expired_credit
  FOR EACH ROW EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER held_expired_credit_no_truncate BEFORE TRUNCATE ON held_expired_credit
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_mutation();

-- A grant changes once at its expiry; after that only `forfeited` moves (the credit its holds release).
CREATE OR REPLACE FUNCTION grants_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (OLD.org_id, OLD.kind, OLD.idempotency_key, OLD.amount, OLD.expires_at)
     IS DISTINCT FROM (NEW.org_id, NEW.kind, NEW.idempotency_key, NEW.amount, NEW.expires_at)
     OR (OLD.expired_at IS NOT NULL
         AND (OLD.expired_at, OLD.held_at_expiry) IS DISTINCT FROM (NEW.expired_at, NEW.held_at_expiry)) THEN
    RAISE EXCEPTION 'grant % is immutable except for its one expiry and its forfeits', OLD.id;
  END IF;
  RETURN NEW;
END $$;

-- A hold's expired credit, settled for a charge of p_spent: each grant's part is forfeited except what
-- the charge spent of it (drawn first, grants in the order they expired). Run under the org's pool
-- lock when the hold resolves, and again when a late charge or a correction changes what it spent.
-- Updates held_expired_credit and grants.forfeited; returns one row per grant whose part changed:
-- `released` = expired credit that was still held (it leaves pools.expired_held), `forfeit` = the
-- change in what is forfeited (negative: the charge spent credit that had been forfeited). The caller
-- moves the pool and writes the journal.
CREATE FUNCTION resolve_expired_credit(p_hold bigint, p_spent bigint, p_t timestamptz)
RETURNS TABLE (grant_id bigint, released bigint, forfeit bigint)
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
#variable_conflict use_column
DECLARE e held_expired_credit; spend bigint := greatest(p_spent, 0); f bigint; was bigint;
BEGIN
  FOR e IN SELECT * FROM held_expired_credit x WHERE x.hold_id = p_hold ORDER BY x.id LOOP
    f := e.amount - least(e.amount, spend);
    spend := spend - least(e.amount, spend);
    was := coalesce(e.forfeited, 0);
    IF e.forfeited IS DISTINCT FROM f THEN
      UPDATE held_expired_credit SET forfeited = f, resolved_at = coalesce(resolved_at, p_t) WHERE id = e.id;
    END IF;
    IF f <> was THEN
      UPDATE grants SET forfeited = forfeited + (f - was) WHERE id = e.grant_id;
    END IF;
    IF e.forfeited IS NULL OR f <> was THEN
      grant_id := e.grant_id;
      released := CASE WHEN e.forfeited IS NULL THEN e.amount ELSE 0 END;
      forfeit := f - was;
      RETURN NEXT;
    END IF;
  END LOOP;
END $$;

-- Expire due grants. The grant's unspent part is clamp(balance - expired credit still held - face value
-- of the org's other live positive credits, 0, amount) (expiring credit is drawn first). Of it, what is
-- available is forfeited now; the rest is covered by pending holds and is attributed to them, oldest
-- first, to be forfeited as they release it (resolve_expired_credit).
CREATE OR REPLACE FUNCTION expire_grants(p_limit int) RETURNS int
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE ids bigint[]; gr grants; pl pools; t timestamptz := creditgate.now(); live bigint; f bigint;
        d bigint; left_ bigint; part bigint; hh record; n int := 0;
BEGIN
  SELECT array_agg(x.id) INTO ids FROM (
    SELECT id FROM grants WHERE expires_at IS NOT NULL AND expired_at IS NULL AND expires_at <= t
     ORDER BY expires_at LIMIT p_limit FOR NO KEY UPDATE SKIP LOCKED) x;
  IF ids IS NULL THEN RETURN 0; END IF;
  PERFORM 1 FROM pools WHERE org_id IN (SELECT org_id FROM grants WHERE id = ANY(ids)) ORDER BY org_id
     FOR NO KEY UPDATE;
  FOR gr IN SELECT * FROM grants WHERE id = ANY(ids) ORDER BY org_id, expires_at, id LOOP
    SELECT * INTO pl FROM pools WHERE org_id = gr.org_id;
    SELECT coalesce(sum(o.amount), 0) INTO live FROM grants o
     WHERE o.org_id = gr.org_id AND o.id <> gr.id AND o.expired_at IS NULL AND o.amount > 0;
    f := least(greatest(pl.granted - pl.posted - pl.pending - pl.overage - live, 0), gr.amount);
    d := least(greatest(pl.granted - pl.posted - pl.overage - pl.expired_held - live, 0), gr.amount) - f;
    left_ := d;
    IF d > 0 THEN  -- d <= pending - expired_held: the room the pending holds have left
      FOR hh IN SELECT h.id, h.amount - coalesce(e.s, 0) AS room
                  FROM holds h
                  LEFT JOIN (SELECT x.hold_id, sum(x.amount) AS s FROM held_expired_credit x
                              WHERE x.org_id = gr.org_id AND x.forfeited IS NULL GROUP BY x.hold_id) e
                         ON e.hold_id = h.id
                 WHERE h.state = 'pending' AND h.org_id = gr.org_id
                 ORDER BY h.id LOOP
        EXIT WHEN left_ = 0;
        part := least(hh.room, left_);
        IF part > 0 THEN
          INSERT INTO held_expired_credit (org_id, hold_id, grant_id, amount, created_at)
          VALUES (gr.org_id, hh.id, gr.id, part, t);
          left_ := left_ - part;
        END IF;
      END LOOP;
      IF left_ <> 0 THEN
        RAISE EXCEPTION 'expire_grants: % of grant % held but no pending hold covers it', left_, gr.id;
      END IF;
    END IF;
    UPDATE grants SET expired_at = t, forfeited = f, held_at_expiry = d WHERE id = gr.id;
    UPDATE pools SET granted = granted - f, expired_held = expired_held + d, version = version + 1
     WHERE org_id = gr.org_id;
    INSERT INTO journal (org_id, version, kind, amount, d_granted, actor, reason, grant_id, created_at)
    VALUES (gr.org_id, pl.version + 1, 'grant_expiry', f, -f, 'sweeper',
            CASE WHEN d > 0 THEN format('grant expired; %s held by requests is forfeited as they release it', d)
                 ELSE 'grant expired' END, gr.id, t);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$;

-- The journal entries of a hold's forfeits (kind grant_expiry), versions after p_version.
CREATE FUNCTION journal_forfeits(p_org text, p_version bigint, p_rid text, p_grants bigint[], p_amounts bigint[],
                                 p_t timestamptz) RETURNS void
LANGUAGE sql SET search_path = creditgate, pg_temp AS $$
  INSERT INTO journal (org_id, version, kind, amount, d_granted, reason, request_id, grant_id, created_at)
  SELECT p_org, p_version + z.o, 'grant_expiry', z.a, -z.a,
         CASE WHEN z.a > 0 THEN 'expired credit released by the request is forfeited'
              ELSE 'forfeited credit the request turned out to spend is restored' END,
         p_rid, z.gid, p_t
    FROM unnest(p_grants, p_amounts) WITH ORDINALITY AS z(gid, a, o)
$$;

-- ledger_batch as in 0002, plus: the hold's expired credit is resolved with its charge (settle, late
-- post after a void, correction of the sweeper's estimate) and the forfeits are journaled.
CREATE OR REPLACE FUNCTION ledger_batch(
  p_ttl_seconds double precision,
  r_org text[], r_rid text[], r_user text[], r_key text[], r_model text[], r_byok boolean[], r_amount bigint[],
  r_prompt bigint[], r_in numeric[], r_out numeric[], r_lin numeric[], r_lout numeric[], r_owner text[],
  s_org text[], s_rid text[], s_prompt bigint[], s_completion bigint[], s_charge bigint[], s_list bigint[],
  s_source text[], s_model text[], s_provider text[], s_deployment text[])
RETURNS TABLE (op text, idx int, status text, amount bigint, charged bigint, remaining bigint)
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
  t timestamptz := creditgate.now();
  cur text; have_pool boolean := false; pl pools; g bigint; p bigint; pe bigint; ov bigint; eh bigint; v bigint;
  h holds; u usage_records; m record; org_suspended boolean; susp_org text;
  k_orgs text[]; k_users text[]; k_periods timestamptz[];
  i int; c bigint; cov bigint; over bigint; delta bigint; rel bigint; u_dov bigint; ps timestamptz;
  used bigint; hid bigint; st text;
  er record; fsum bigint; fx_grant bigint[]; fx_amt bigint[]; fi int;
  o_op text[] := '{}'; o_idx int[] := '{}'; o_status text[] := '{}'; o_amount bigint[] := '{}';
  o_charged bigint[] := '{}'; o_org text[] := '{}'; o_user text[] := '{}';
  -- journal entries, written with one INSERT at the end
  j_org text[] := '{}'; j_ver bigint[] := '{}'; j_kind text[] := '{}'; j_amount bigint[] := '{}';
  j_dg bigint[] := '{}'; j_dp bigint[] := '{}'; j_dpe bigint[] := '{}'; j_dov bigint[] := '{}'; j_rid text[] := '{}';
  j_user text[] := '{}'; j_grant bigint[] := '{}'; j_reason text[] := '{}';
BEGIN
  -- 1. the settled holds, by id
  PERFORM 1 FROM holds hh JOIN unnest(s_org, s_rid) AS k(o, r) ON hh.org_id = k.o AND hh.request_id = k.r
   ORDER BY hh.id FOR NO KEY UPDATE OF hh;
  -- 2. allocation rows (the settled holds' periods, the reserving members' current periods), created
  --    if missing, locked sorted
  SELECT array_agg(x.org_id), array_agg(x.user_id), array_agg(x.ps) INTO k_orgs, k_users, k_periods FROM (
    SELECT hh.org_id, hh.user_id, hh.period_start AS ps
      FROM holds hh JOIN unnest(s_org, s_rid) AS k(o, r) ON hh.org_id = k.o AND hh.request_id = k.r
    UNION
    SELECT mm.org_id, mm.user_id, period_start(mm.allocation_period, t)
      FROM memberships mm JOIN unnest(r_org, r_user) AS k(o, us) ON mm.org_id = k.o AND mm.user_id = k.us
    ORDER BY 1, 2, 3) x;
  IF k_orgs IS NOT NULL THEN
    INSERT INTO allocation_usage (org_id, user_id, period_start)
    SELECT * FROM unnest(k_orgs, k_users, k_periods) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM allocation_usage a JOIN unnest(k_orgs, k_users, k_periods) AS k(o, us, ps)
        ON a.org_id = k.o AND a.user_id = k.us AND a.period_start = k.ps
     ORDER BY a.org_id, a.user_id, a.period_start FOR NO KEY UPDATE OF a;
  END IF;
  -- 3. the pools, last (the hot rows are held for the shortest time)
  PERFORM 1 FROM pools WHERE org_id = ANY(r_org || s_org) ORDER BY org_id FOR NO KEY UPDATE;

  FOR i IN 1 .. coalesce(array_length(s_rid, 1), 0) LOOP
    IF s_org[i] IS DISTINCT FROM cur THEN
      IF have_pool AND v <> pl.version THEN
        UPDATE pools SET granted = g, posted = p, pending = pe, overage = ov, expired_held = eh, version = v
         WHERE org_id = cur;
      END IF;
      cur := s_org[i];
      SELECT * INTO pl FROM pools WHERE org_id = cur;
      have_pool := FOUND;
      g := pl.granted; p := pl.posted; pe := pl.pending; ov := pl.overage; eh := pl.expired_held; v := pl.version;
    END IF;
    SELECT * INTO h FROM holds WHERE org_id = cur AND request_id = s_rid[i]
     ORDER BY state = 'voided', id DESC LIMIT 1;
    IF NOT FOUND OR NOT have_pool THEN
      o_op := o_op || 'settle'::text; o_idx := o_idx || i; o_status := o_status || 'not_found'::text;
      o_amount := o_amount || NULL::bigint; o_charged := o_charged || NULL::bigint; o_org := o_org || cur;
      o_user := o_user || NULL::text;
      CONTINUE;
    END IF;
    c := s_charge[i];
    u := NULL;
    IF h.state <> 'pending' THEN  -- a pending hold has no usage record yet (audited by invariant_violations)
      SELECT * INTO u FROM usage_records WHERE org_id = cur AND request_id = s_rid[i];
    END IF;
    IF u.request_id IS NOT NULL AND NOT u.estimated THEN
      st := CASE WHEN u.charged = c THEN 'already_settled' ELSE 'conflict' END;
      c := u.charged;
    ELSE
      -- the expired credit this hold covers, settled with this charge (a pending hold has some only
      -- while the pool has some; a resolved one is looked up: late charges are rare)
      fsum := 0; fx_grant := '{}'; fx_amt := '{}';
      IF h.state <> 'pending' OR eh > 0 THEN
        FOR er IN SELECT * FROM resolve_expired_credit(h.id, c, t) LOOP
          eh := eh - er.released;
          IF er.forfeit <> 0 THEN
            fsum := fsum + er.forfeit; fx_grant := fx_grant || er.grant_id; fx_amt := fx_amt || er.forfeit;
          END IF;
        END LOOP;
      END IF;
      IF u.request_id IS NOT NULL THEN
        -- the sweeper settled this hold from its checkpoint; the real usage replaces that estimate once
        delta := c - u.charged;
        IF delta >= 0 THEN  -- fsum <= 0: forfeited credit this usage spent is restored and spent first
          cov := -fsum + least(delta + fsum, greatest(g - p - pe - ov, 0)); over := delta - cov; u_dov := -over;
        ELSE  -- fsum >= 0: expired credit the estimate had spent is forfeited first
          rel := -delta; over := -least(ov, rel - fsum); cov := -(rel + over); u_dov := least(u.overage, rel);
        END IF;
        g := g - fsum; p := p + cov; ov := ov + over; v := v + 1;
        UPDATE usage_records SET prompt_tokens = s_prompt[i], completion_tokens = s_completion[i], charged = c,
               covered = c - (u.overage - u_dov), overage = u.overage - u_dov, list_price = s_list[i],
               usage_source = s_source[i], model = s_model[i], provider = s_provider[i],
               deployment = s_deployment[i], estimated = false, corrected_at = t
         WHERE org_id = cur AND request_id = s_rid[i];
        UPDATE allocation_usage SET posted = posted + delta
         WHERE org_id = cur AND user_id = h.user_id AND period_start = h.period_start;
        j_org := j_org || cur; j_ver := j_ver || v; j_kind := j_kind || 'correction'::text;
        j_amount := j_amount || delta; j_dg := j_dg || 0::bigint; j_dp := j_dp || cov; j_dpe := j_dpe || 0::bigint;
        j_dov := j_dov || over; j_rid := j_rid || h.request_id; j_user := j_user || h.user_id;
        j_grant := j_grant || NULL::bigint; j_reason := j_reason || NULL::text;
        st := 'late_posted';
      ELSE
        IF h.state = 'pending' THEN
          cov := least(c, h.amount); over := c - cov;
          pe := pe - h.amount;
          UPDATE holds SET state = 'posted', resolved_at = t WHERE id = h.id;
          UPDATE allocation_usage SET pending = pending - h.amount, posted = posted + c
           WHERE org_id = cur AND user_id = h.user_id AND period_start = h.period_start;
          st := 'posted';
        ELSE  -- voided: usage is never dropped; covered by what credit is left (after forfeited credit this
              -- charge spent, restored: fsum <= 0), the rest is overage
          cov := -fsum + least(c + fsum, greatest(g - p - pe - ov, 0)); over := c - cov;
          UPDATE allocation_usage SET posted = posted + c
           WHERE org_id = cur AND user_id = h.user_id AND period_start = h.period_start;
          st := 'late_posted';
        END IF;
        g := g - fsum; p := p + cov; ov := ov + over; v := v + 1;
        INSERT INTO usage_records (org_id, request_id, hold_id, user_id, key_id, model, provider, deployment,
               prompt_tokens, completion_tokens, charged, covered, overage, list_price, usage_source, byok,
               period_start, recorded_at)
        VALUES (cur, h.request_id, h.id, h.user_id, h.key_id, s_model[i], s_provider[i], s_deployment[i],
               s_prompt[i], s_completion[i], c, cov, over, s_list[i], s_source[i], h.byok, h.period_start, t);
        j_org := j_org || cur; j_ver := j_ver || v;
        j_kind := j_kind || CASE WHEN st = 'posted' THEN 'post' ELSE 'late_post' END;
        j_amount := j_amount || c; j_dg := j_dg || 0::bigint; j_dp := j_dp || cov;
        j_dpe := j_dpe || CASE WHEN st = 'posted' THEN -h.amount ELSE 0 END;
        j_dov := j_dov || over; j_rid := j_rid || h.request_id; j_user := j_user || h.user_id;
        j_grant := j_grant || NULL::bigint; j_reason := j_reason || NULL::text;
      END IF;
      FOR fi IN 1 .. coalesce(array_length(fx_grant, 1), 0) LOOP
        v := v + 1;
        j_org := j_org || cur; j_ver := j_ver || v; j_kind := j_kind || 'grant_expiry'::text;
        j_amount := j_amount || fx_amt[fi]; j_dg := j_dg || -fx_amt[fi]; j_dp := j_dp || 0::bigint;
        j_dpe := j_dpe || 0::bigint; j_dov := j_dov || 0::bigint; j_rid := j_rid || h.request_id;
        j_user := j_user || NULL::text; j_grant := j_grant || fx_grant[fi];
        j_reason := j_reason || CASE WHEN fx_amt[fi] > 0 THEN 'expired credit released by the request is forfeited'
                                     ELSE 'forfeited credit the request turned out to spend is restored' END;
      END LOOP;
    END IF;
    o_op := o_op || 'settle'::text; o_idx := o_idx || i; o_status := o_status || st; o_amount := o_amount || h.amount;
    o_charged := o_charged || c; o_org := o_org || cur; o_user := o_user || h.user_id;
  END LOOP;

  FOR i IN 1 .. coalesce(array_length(r_rid, 1), 0) LOOP
    IF r_org[i] IS DISTINCT FROM cur THEN
      IF have_pool AND v <> pl.version THEN
        UPDATE pools SET granted = g, posted = p, pending = pe, overage = ov, expired_held = eh, version = v
         WHERE org_id = cur;
      END IF;
      cur := r_org[i];
      SELECT * INTO pl FROM pools WHERE org_id = cur;
      have_pool := FOUND;
      g := pl.granted; p := pl.posted; pe := pl.pending; ov := pl.overage; eh := pl.expired_held; v := pl.version;
    END IF;
    IF susp_org IS DISTINCT FROM cur THEN  -- not with the pool: the settle loop may have loaded it
      SELECT oo.suspended INTO org_suspended FROM orgs oo WHERE oo.id = cur;
      susp_org := cur;
    END IF;
    st := NULL;
    SELECT mm.allocation_millicredits AS lim, mm.allocation_period AS period, mm.suspended INTO m
      FROM memberships mm WHERE mm.org_id = cur AND mm.user_id = r_user[i];
    IF NOT FOUND OR NOT have_pool THEN
      st := 'not_a_member';
    ELSIF org_suspended IS NOT FALSE OR m.suspended THEN
      st := 'suspended';
    ELSIF in_use(cur, r_rid[i]) THEN
      st := 'request_id_in_use';
    ELSIF r_amount[i] > g - p - pe - ov THEN
      st := 'org_pool_exhausted';
    ELSE
      ps := period_start(m.period, t);
      IF m.lim IS NOT NULL THEN
        SELECT a.posted + a.pending INTO used FROM allocation_usage a
         WHERE a.org_id = cur AND a.user_id = r_user[i] AND a.period_start = ps;
        IF m.lim - coalesce(used, 0) < r_amount[i] THEN
          st := 'user_allocation_exhausted';
        END IF;
      END IF;
    END IF;
    IF st IS NULL THEN
      INSERT INTO holds (org_id, request_id, user_id, key_id, model, byok, amount, period_start, prompt_tokens,
             input_rate, output_rate, list_input_rate, list_output_rate, owner, created_at, expires_at)
      VALUES (cur, r_rid[i], r_user[i], r_key[i], r_model[i], r_byok[i], r_amount[i], ps, r_prompt[i],
             r_in[i], r_out[i], r_lin[i], r_lout[i], r_owner[i], t, t + make_interval(secs => p_ttl_seconds))
      ON CONFLICT (org_id, request_id) WHERE state <> 'voided' DO NOTHING
      RETURNING id INTO hid;
      IF hid IS NULL THEN
        st := 'request_id_in_use';
      ELSE
        UPDATE allocation_usage SET pending = pending + r_amount[i]
         WHERE org_id = cur AND user_id = r_user[i] AND period_start = ps;
        IF NOT FOUND THEN  -- the membership's period changed since step 2 (READ COMMITTED)
          INSERT INTO allocation_usage AS a (org_id, user_id, period_start, pending)
          VALUES (cur, r_user[i], ps, r_amount[i])
          ON CONFLICT (org_id, user_id, period_start) DO UPDATE SET pending = a.pending + EXCLUDED.pending;
        END IF;
        pe := pe + r_amount[i]; v := v + 1;
        j_org := j_org || cur; j_ver := j_ver || v; j_kind := j_kind || 'hold'::text;
        j_amount := j_amount || r_amount[i]; j_dg := j_dg || 0::bigint; j_dp := j_dp || 0::bigint;
        j_dpe := j_dpe || r_amount[i]; j_dov := j_dov || 0::bigint; j_rid := j_rid || r_rid[i];
        j_user := j_user || r_user[i]; j_grant := j_grant || NULL::bigint; j_reason := j_reason || NULL::text;
        st := 'held';
      END IF;
    END IF;
    o_op := o_op || 'reserve'::text; o_idx := o_idx || i; o_status := o_status || st;
    o_amount := o_amount || CASE WHEN st = 'held' THEN r_amount[i] END; o_charged := o_charged || NULL::bigint;
    o_org := o_org || cur; o_user := o_user || NULL::text;
  END LOOP;
  IF have_pool AND v <> pl.version THEN
    UPDATE pools SET granted = g, posted = p, pending = pe, overage = ov, expired_held = eh, version = v
     WHERE org_id = cur;
  END IF;
  INSERT INTO journal (org_id, version, kind, amount, d_granted, d_posted, d_pending, d_overage, request_id, user_id,
         grant_id, reason, created_at)
  SELECT jo, jv, jk, ja, jg, jp, jpe, jov, jr, ju, jgr, jre, t
    FROM unnest(j_org, j_ver, j_kind, j_amount, j_dg, j_dp, j_dpe, j_dov, j_rid, j_user, j_grant, j_reason)
         AS j(jo, jv, jk, ja, jg, jp, jpe, jov, jr, ju, jgr, jre);

  RETURN QUERY
  SELECT x.op, x.idx, x.status, x.amount, x.charged,
         CASE WHEN x.op = 'settle' AND x.status <> 'not_found' THEN greatest(0, least(
           pp.granted - pp.posted - pp.pending - pp.overage,
           coalesce(mm.allocation_millicredits - coalesce(a.posted + a.pending, 0),
                    pp.granted - pp.posted - pp.pending - pp.overage))) END
    FROM unnest(o_op, o_idx, o_status, o_amount, o_charged, o_org, o_user)
         AS x(op, idx, status, amount, charged, org_id, user_id)
    LEFT JOIN pools pp ON pp.org_id = x.org_id
    LEFT JOIN memberships mm ON mm.org_id = x.org_id AND mm.user_id = x.user_id
    LEFT JOIN allocation_usage a ON a.org_id = x.org_id AND a.user_id = x.user_id
         AND a.period_start = period_start(mm.allocation_period, t);
END $$;

-- void_hold as in 0002, plus: the hold's expired credit is forfeited whole (nothing was spent).
CREATE OR REPLACE FUNCTION void_hold(p_org text, p_rid text, p_owner text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE h holds; t timestamptz := creditgate.now(); v bigint; er record; rl bigint := 0; fsum bigint := 0;
        fx_grant bigint[] := '{}'; fx_amt bigint[] := '{}'; k int;
BEGIN
  SELECT * INTO h FROM holds WHERE org_id = p_org AND request_id = p_rid
   ORDER BY state = 'voided', id DESC LIMIT 1 FOR NO KEY UPDATE;
  IF NOT FOUND THEN RETURN 'not_found'; END IF;
  IF p_owner IS NOT NULL AND h.owner IS DISTINCT FROM p_owner THEN RETURN 'not_owner'; END IF;
  IF h.state <> 'pending' THEN RETURN 'already_' || h.state::text; END IF;
  PERFORM 1 FROM allocation_usage WHERE org_id = p_org AND user_id = h.user_id AND period_start = h.period_start
     FOR NO KEY UPDATE;
  PERFORM 1 FROM pools WHERE org_id = p_org FOR NO KEY UPDATE;  -- before reading the hold's expired credit
  FOR er IN SELECT * FROM resolve_expired_credit(h.id, 0, t) LOOP
    rl := rl + er.released;
    IF er.forfeit <> 0 THEN
      fsum := fsum + er.forfeit; fx_grant := fx_grant || er.grant_id; fx_amt := fx_amt || er.forfeit;
    END IF;
  END LOOP;
  k := coalesce(array_length(fx_grant, 1), 0);
  UPDATE allocation_usage SET pending = pending - h.amount
   WHERE org_id = p_org AND user_id = h.user_id AND period_start = h.period_start;
  UPDATE pools SET pending = pending - h.amount, granted = granted - fsum, expired_held = expired_held - rl,
         version = version + 1 + k WHERE org_id = p_org RETURNING version INTO v;
  INSERT INTO journal (org_id, version, kind, amount, d_pending, request_id, user_id, created_at)
  VALUES (p_org, v - k, 'void', h.amount, -h.amount, h.request_id, h.user_id, t);
  PERFORM journal_forfeits(p_org, v - k, h.request_id, fx_grant, fx_amt, t);
  UPDATE holds SET state = 'voided', resolved_at = t WHERE id = h.id;
  RETURN 'voided';
END $$;

-- expire_holds as in 0002, plus: each hold's expired credit is settled with the sweeper's charge.
CREATE OR REPLACE FUNCTION expire_holds(p_limit int) RETURNS int
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE ids bigint[]; h holds; t timestamptz := creditgate.now(); c bigint; lp bigint; cov bigint;
        over bigint; v bigint; n int := 0; er record; rl bigint; fsum bigint; fx_grant bigint[]; fx_amt bigint[];
        k int;
BEGIN
  SELECT array_agg(x.id) INTO ids FROM (
    SELECT id FROM holds WHERE state = 'pending' AND expires_at <= t
     ORDER BY expires_at LIMIT p_limit FOR NO KEY UPDATE SKIP LOCKED) x;
  IF ids IS NULL THEN RETURN 0; END IF;
  PERFORM 1 FROM allocation_usage a
   WHERE (a.org_id, a.user_id, a.period_start) IN (SELECT org_id, user_id, period_start FROM holds WHERE id = ANY(ids))
   ORDER BY a.org_id, a.user_id, a.period_start FOR NO KEY UPDATE;
  PERFORM 1 FROM pools WHERE org_id IN (SELECT org_id FROM holds WHERE id = ANY(ids)) ORDER BY org_id
     FOR NO KEY UPDATE;
  FOR h IN SELECT * FROM holds WHERE id = ANY(ids) ORDER BY org_id, id LOOP
    c := ceil(h.prompt_tokens * h.input_rate + h.streamed_tokens * h.output_rate)::bigint;
    lp := ceil(h.prompt_tokens * h.list_input_rate + h.streamed_tokens * h.list_output_rate)::bigint;
    IF h.input_rate = 0 AND h.output_rate = 0 AND NOT h.byok THEN
      -- priced per unit, not per token (image generations): the hold is the price of what was asked
      c := h.amount; lp := h.amount;
    END IF;
    cov := least(c, h.amount); over := c - cov;
    rl := 0; fsum := 0; fx_grant := '{}'; fx_amt := '{}';
    FOR er IN SELECT * FROM resolve_expired_credit(h.id, c, t) LOOP
      rl := rl + er.released;
      IF er.forfeit <> 0 THEN
        fsum := fsum + er.forfeit; fx_grant := fx_grant || er.grant_id; fx_amt := fx_amt || er.forfeit;
      END IF;
    END LOOP;
    k := coalesce(array_length(fx_grant, 1), 0);
    UPDATE allocation_usage SET pending = pending - h.amount, posted = posted + c
     WHERE org_id = h.org_id AND user_id = h.user_id AND period_start = h.period_start;
    UPDATE pools SET pending = pending - h.amount, posted = posted + cov, overage = overage + over,
           granted = granted - fsum, expired_held = expired_held - rl, version = version + 1 + k
     WHERE org_id = h.org_id RETURNING version INTO v;
    INSERT INTO journal (org_id, version, kind, amount, d_posted, d_pending, d_overage, request_id, user_id,
           created_at)
    VALUES (h.org_id, v - k, 'expire', c, cov, -h.amount, over, h.request_id, h.user_id, t);
    PERFORM journal_forfeits(h.org_id, v - k, h.request_id, fx_grant, fx_amt, t);
    INSERT INTO usage_records (org_id, request_id, hold_id, user_id, key_id, model, prompt_tokens,
           completion_tokens, charged, covered, overage, list_price, usage_source, byok, period_start, estimated,
           recorded_at)
    VALUES (h.org_id, h.request_id, h.id, h.user_id, h.key_id, h.model, h.prompt_tokens, h.streamed_tokens, c, cov,
           over, lp, CASE WHEN h.streamed_tokens > 0 THEN 'checkpoint' ELSE 'prompt_only' END, h.byok,
           h.period_start, true, t);
    UPDATE holds SET state = 'expired', resolved_at = t WHERE id = h.id;
    n := n + 1;
  END LOOP;
  RETURN n;
END $$;

-- ------------------------------------------------------------------ audit

-- Overage found in the usage records, per org: requests charged above their hold (the hold bounds
-- every charge) or beyond the credit left (a late charge after a void, recorded as a receivable).
-- Each counts once, for the larger of the two. A defect wherever it appears: `creditgate verify`
-- reports every row and fails (CONTRACT.md, Money, invariant 1). Netting by a later grant does not
-- erase it.
CREATE VIEW overage_by_org AS
SELECT u.org_id, count(*) AS requests, sum(greatest(u.charged - h.amount, u.overage))::bigint AS millicredits
  FROM usage_records u JOIN holds h ON h.id = u.hold_id
 WHERE u.charged > h.amount OR u.overage > 0
 GROUP BY u.org_id;

-- invariant_violations as in 0002, plus the expired-credit bookkeeping.
CREATE OR REPLACE VIEW invariant_violations AS
WITH pend AS (
  SELECT org_id, sum(amount) AS s FROM holds WHERE state = 'pending' GROUP BY org_id
), charged AS (
  SELECT org_id, sum(charged) AS s FROM usage_records GROUP BY org_id
), fold AS (
  SELECT org_id, sum(d_granted) AS g, sum(d_posted) AS p, sum(d_pending) AS pe, sum(d_overage) AS ov,
         count(*) AS n, max(version) AS v
    FROM journal GROUP BY org_id
), alloc AS (
  SELECT coalesce(a.org_id, hp.org_id, ur.org_id) AS org_id, coalesce(a.user_id, hp.user_id, ur.user_id) AS user_id,
         coalesce(a.period_start, hp.period_start, ur.period_start) AS period_start,
         coalesce(a.pending, 0) AS pending, coalesce(a.posted, 0) AS posted,
         coalesce(hp.s, 0) AS held, coalesce(ur.s, 0) AS spent
    FROM allocation_usage a
    FULL JOIN (SELECT org_id, user_id, period_start, sum(amount) AS s FROM holds WHERE state = 'pending'
                GROUP BY 1, 2, 3) hp USING (org_id, user_id, period_start)
    FULL JOIN (SELECT org_id, user_id, period_start, sum(charged) AS s FROM usage_records
                GROUP BY 1, 2, 3) ur USING (org_id, user_id, period_start)
), expired_held AS (
  SELECT org_id, sum(amount) AS s FROM held_expired_credit WHERE forfeited IS NULL GROUP BY org_id
), expired_parts AS (  -- each part with what its hold's final charge leaves forfeited (drawn first, in order)
  SELECT e.*, h.org_id AS hold_org, h.request_id, h.state, h.amount AS hold_amount,
         e.amount - least(e.amount, greatest(coalesce(u.charged, 0)
           - (sum(e.amount) OVER (PARTITION BY e.hold_id ORDER BY e.id) - e.amount), 0)) AS due
    FROM held_expired_credit e
    LEFT JOIN holds h ON h.id = e.hold_id
    LEFT JOIN usage_records u ON u.hold_id = e.hold_id
), grant_journal AS (
  SELECT grant_id, sum(amount) AS s FROM journal WHERE kind = 'grant_expiry' GROUP BY grant_id
)
SELECT 'pool_pending_matches_holds' AS invariant, p.org_id AS subject,
       format('pending %s, pending holds %s', p.pending, coalesce(pend.s, 0)) AS detail
  FROM pools p LEFT JOIN pend USING (org_id) WHERE p.pending <> coalesce(pend.s, 0)
UNION ALL
SELECT 'pool_spend_matches_usage', p.org_id,
       format('posted %s + overage %s, usage charged %s', p.posted, p.overage, coalesce(charged.s, 0))
  FROM pools p LEFT JOIN charged USING (org_id) WHERE p.posted + p.overage <> coalesce(charged.s, 0)
UNION ALL
SELECT 'allocation_matches_holds_and_usage', org_id || '/' || user_id || '@' || period_start,
       format('pending %s vs holds %s, posted %s vs usage %s', pending, held, posted, spent)
  FROM alloc WHERE pending <> held OR posted <> spent
UNION ALL
SELECT 'journal_fold_matches_pool', p.org_id,
       format('pool (%s,%s,%s,%s,v%s) journal (%s,%s,%s,%s,v%s)', p.granted, p.posted, p.pending, p.overage,
              p.version, f.g, f.p, f.pe, f.ov, f.v)
  FROM pools p LEFT JOIN fold f USING (org_id)
 WHERE (p.granted, p.posted, p.pending, p.overage, p.version)
       IS DISTINCT FROM (coalesce(f.g, 0), coalesce(f.p, 0), coalesce(f.pe, 0), coalesce(f.ov, 0), coalesce(f.v, 0))
UNION ALL
SELECT 'journal_versions_contiguous', p.org_id, format('version %s, %s entries', p.version, coalesce(f.n, 0))
  FROM pools p LEFT JOIN fold f USING (org_id) WHERE p.version <> coalesce(f.n, 0)
UNION ALL
SELECT 'settled_hold_has_one_usage_record', h.org_id || '/' || h.request_id, h.state::text
  FROM holds h LEFT JOIN usage_records u ON u.hold_id = h.id
 WHERE (h.state IN ('posted', 'expired')) <> (u.hold_id IS NOT NULL) AND h.state <> 'voided'
UNION ALL
SELECT 'usage_record_belongs_to_its_hold', u.org_id || '/' || u.request_id, 'hold ' || u.hold_id
  FROM usage_records u LEFT JOIN holds h ON h.id = u.hold_id
 WHERE h.id IS NULL OR (h.org_id, h.request_id) IS DISTINCT FROM (u.org_id, u.request_id)
UNION ALL
SELECT 'no_hold_outlives_expiry', h.org_id || '/' || h.request_id, 'expired at ' || h.expires_at
  FROM holds h WHERE h.state = 'pending'
   AND h.expires_at < creditgate.now() - (SELECT hold_grace FROM ledger_settings)
UNION ALL
SELECT 'spent_and_held_within_granted', p.org_id,
       format('posted %s + pending %s > granted %s', p.posted, p.pending, p.granted)
  FROM pools p WHERE p.posted + p.pending > p.granted OR least(p.granted, p.posted, p.pending, p.overage) < 0
UNION ALL
SELECT 'database_clock_not_skewed', 'clock_skew', 'skew ' || skew FROM clock_skew
UNION ALL
SELECT 'expired_credit_matches_holds', p.org_id,
       format('expired_held %s, expired credit of pending holds %s', p.expired_held, coalesce(eh.s, 0))
  FROM pools p LEFT JOIN expired_held eh USING (org_id)
 WHERE p.expired_held <> coalesce(eh.s, 0) OR p.expired_held > p.pending
UNION ALL
SELECT 'expired_credit_follows_its_hold', e.org_id || '/' || coalesce(e.request_id, '#' || e.hold_id),
       format('hold %s %s of %s: expired credit %s of grant %s, forfeited %s, due %s', e.hold_id, e.state,
              e.hold_amount, e.amount, e.grant_id, e.forfeited, e.due)
  FROM expired_parts e
 WHERE e.hold_org IS DISTINCT FROM e.org_id
    OR (e.state = 'pending') <> (e.forfeited IS NULL)
    OR (e.forfeited IS NOT NULL AND e.forfeited <> e.due)
UNION ALL
SELECT 'expired_credit_within_hold', e.org_id || '/' || coalesce(max(e.request_id), '#' || e.hold_id),
       format('hold of %s covers %s of expired credit', max(e.hold_amount), sum(e.amount))
  FROM expired_parts e GROUP BY e.org_id, e.hold_id HAVING sum(e.amount) > max(e.hold_amount)
UNION ALL
SELECT 'grant_forfeit_matches_journal', g.org_id || '/grant_' || g.id,
       format('forfeited %s, held at expiry %s; journal %s, expired credit %s', g.forfeited, g.held_at_expiry,
              gj.s, (SELECT sum(x.amount) FROM held_expired_credit x WHERE x.grant_id = g.id))
  FROM grants g LEFT JOIN grant_journal gj ON gj.grant_id = g.id
 WHERE g.expired_at IS NOT NULL
   AND (g.forfeited IS DISTINCT FROM coalesce(gj.s, 0)
        OR coalesce(g.held_at_expiry, 0) <> coalesce((SELECT sum(x.amount) FROM held_expired_credit x
                                                      WHERE x.grant_id = g.id), 0));
