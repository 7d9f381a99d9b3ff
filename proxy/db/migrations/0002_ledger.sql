-- The credit ledger: one pool per org, per-member allocation usage per calendar period (UTC),
-- two-phase holds, exactly one usage record per served request, an append-only journal, grants.
-- Amounts are bigint millicredits; rates are exact numerics (millicredits per token).
-- Every money operation is one function call = one transaction, READ COMMITTED.
-- Lock order everywhere: hold rows -> allocation rows (sorted by org, user, period) -> pool rows
-- (sorted by org). FK targets are only ever locked FOR NO KEY UPDATE (a FOR UPDATE on them deadlocks
-- against inserters' KEY SHARE locks; research/ledger.md §4.4).
SET LOCAL search_path = creditgate;

-- The clock. Only the database clock is used; tests skew it by inserting one row here.
-- Production never writes this table (`invariant_violations` reports a skew).
CREATE TABLE clock_skew (
  singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  skew       interval NOT NULL
);
CREATE FUNCTION now() RETURNS timestamptz LANGUAGE sql STABLE AS $$
  SELECT pg_catalog.now() + coalesce((SELECT skew FROM creditgate.clock_skew), interval '0')
$$;

-- Start of the allocation period containing t: 'none' is one everlasting period; weeks are ISO (Monday).
CREATE FUNCTION period_start(p text, t timestamptz) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE p
    WHEN 'none'  THEN timestamptz '1970-01-01 00:00:00+00'
    WHEN 'day'   THEN date_trunc('day', t, 'UTC')
    WHEN 'week'  THEN date_trunc('week', t, 'UTC')
    WHEN 'month' THEN date_trunc('month', t, 'UTC')
  END
$$;
CREATE FUNCTION period_end(p text, t timestamptz) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE p
    WHEN 'day'   THEN (date_trunc('day', t, 'UTC') AT TIME ZONE 'UTC' + interval '1 day') AT TIME ZONE 'UTC'
    WHEN 'week'  THEN (date_trunc('week', t, 'UTC') AT TIME ZONE 'UTC' + interval '1 week') AT TIME ZONE 'UTC'
    WHEN 'month' THEN (date_trunc('month', t, 'UTC') AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC'
  END
$$;

-- granted: credit in (grants, adjustments, minus forfeits); posted: spend covered by credit;
-- pending: held; overage: spend beyond hold and credit (a receivable: blocks admission, netted by grants).
-- balance = granted - posted - overage; available = balance - pending.
CREATE TABLE pools (
  org_id   text PRIMARY KEY REFERENCES orgs(id),
  granted  bigint NOT NULL DEFAULT 0,
  posted   bigint NOT NULL DEFAULT 0,
  pending  bigint NOT NULL DEFAULT 0,
  overage  bigint NOT NULL DEFAULT 0,
  version  bigint NOT NULL DEFAULT 0,
  CONSTRAINT pool_nonnegative CHECK (granted >= 0 AND posted >= 0 AND pending >= 0 AND overage >= 0),
  CONSTRAINT pool_spent_within_credit CHECK (posted + pending <= granted)   -- invariant 1
);

CREATE FUNCTION create_pool() RETURNS trigger LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
BEGIN
  INSERT INTO pools (org_id) VALUES (NEW.id);
  RETURN NULL;
END $$;
CREATE TRIGGER orgs_create_pool AFTER INSERT ON orgs FOR EACH ROW EXECUTE FUNCTION create_pool();
INSERT INTO pools (org_id) SELECT id FROM orgs ON CONFLICT DO NOTHING;

-- A member's usage in one period. posted includes overage (all the member's spend); the limit lives
-- in memberships and is read inside reserve's transaction, so lowering it never rewrites history.
CREATE TABLE allocation_usage (
  org_id        text NOT NULL,
  user_id       text NOT NULL,
  period_start  timestamptz NOT NULL,
  posted        bigint NOT NULL DEFAULT 0 CHECK (posted >= 0),
  pending       bigint NOT NULL DEFAULT 0 CHECK (pending >= 0),
  PRIMARY KEY (org_id, user_id, period_start)
);

CREATE TYPE hold_state AS ENUM ('pending', 'posted', 'voided', 'expired');

CREATE TABLE holds (
  id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  org_id            text NOT NULL,
  request_id        text NOT NULL,
  user_id           text NOT NULL,
  key_id            text NOT NULL,
  model             text NOT NULL,
  byok              boolean NOT NULL,
  amount            bigint NOT NULL CHECK (amount >= 0),
  state             hold_state NOT NULL DEFAULT 'pending',
  period_start      timestamptz NOT NULL,
  prompt_tokens     bigint NOT NULL CHECK (prompt_tokens >= 0),
  input_rate        numeric NOT NULL CHECK (input_rate >= 0),
  output_rate       numeric NOT NULL CHECK (output_rate >= 0),
  list_input_rate   numeric NOT NULL CHECK (list_input_rate >= 0),
  list_output_rate  numeric NOT NULL CHECK (list_output_rate >= 0),
  streamed_tokens   bigint NOT NULL DEFAULT 0 CHECK (streamed_tokens >= 0),
  owner             text,  -- nonce of the reserve call that created it: only that call may void it blind
  created_at        timestamptz NOT NULL,
  expires_at        timestamptz NOT NULL,
  resolved_at       timestamptz,
  CHECK ((state = 'pending') = (resolved_at IS NULL))
);
-- request ids are unique per org among holds that were not voided (a voided id may be reused)
CREATE UNIQUE INDEX holds_live_request ON holds (org_id, request_id) WHERE state <> 'voided';
CREATE INDEX holds_request ON holds (org_id, request_id, id);
CREATE INDEX holds_due ON holds (expires_at) WHERE state = 'pending';

CREATE TABLE usage_records (
  org_id             text NOT NULL,
  request_id         text NOT NULL,
  hold_id            bigint NOT NULL,  -- one per hold: (org, request_id) is unique, a hold has one id
  user_id            text NOT NULL,
  key_id             text NOT NULL,
  model              text NOT NULL,
  provider           text,
  deployment         text,
  prompt_tokens      bigint NOT NULL CHECK (prompt_tokens >= 0),
  completion_tokens  bigint NOT NULL CHECK (completion_tokens >= 0),
  charged            bigint NOT NULL CHECK (charged >= 0),
  covered            bigint NOT NULL CHECK (covered >= 0),
  overage            bigint NOT NULL CHECK (overage >= 0),
  list_price         bigint NOT NULL CHECK (list_price >= 0),
  usage_source       text NOT NULL CHECK (usage_source IN ('provider', 'estimate', 'checkpoint', 'prompt_only')),
  byok               boolean NOT NULL,
  period_start       timestamptz NOT NULL,
  estimated          boolean NOT NULL DEFAULT false,  -- written by the sweeper; replaceable once by a late settle
  corrected_at       timestamptz,
  recorded_at        timestamptz NOT NULL,
  PRIMARY KEY (org_id, request_id),
  CHECK (covered + overage = charged)
);
CREATE INDEX usage_org_time ON usage_records (org_id, recorded_at);

CREATE TABLE grants (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  org_id           text NOT NULL,
  kind             text NOT NULL CHECK (kind IN ('grant', 'adjustment')),
  idempotency_key  text NOT NULL,
  amount           bigint NOT NULL CHECK (amount <> 0 AND (kind = 'adjustment' OR amount > 0)),
  reason           text NOT NULL,
  actor            text NOT NULL,
  expires_at       timestamptz CHECK (kind = 'grant' OR expires_at IS NULL),
  expired_at       timestamptz,
  forfeited        bigint CHECK (forfeited >= 0 AND forfeited <= amount),
  created_at       timestamptz NOT NULL,
  UNIQUE (org_id, idempotency_key)
);
CREATE INDEX grants_due ON grants (expires_at) WHERE expires_at IS NOT NULL AND expired_at IS NULL;

-- One entry per pool version; the pool balances are the fold of the deltas (invariant 4).
CREATE TABLE journal (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  org_id      text NOT NULL,
  version     bigint NOT NULL,
  kind        text NOT NULL CHECK (kind IN ('grant', 'grant_expiry', 'adjustment', 'hold', 'post', 'void',
                                            'expire', 'late_post', 'correction')),
  amount      bigint NOT NULL,
  d_granted   bigint NOT NULL DEFAULT 0,
  d_posted    bigint NOT NULL DEFAULT 0,
  d_pending   bigint NOT NULL DEFAULT 0,
  d_overage   bigint NOT NULL DEFAULT 0,
  actor       text,
  reason      text,
  request_id  text,
  user_id     text,
  grant_id    bigint,
  created_at  timestamptz NOT NULL,
  UNIQUE (org_id, version)
);
CREATE INDEX journal_org_user ON journal (org_id, user_id, id);

-- How long past its expiry a pending hold may live before `invariant_violations` reports it
-- (2 sweep intervals + slack; the sweeper runs every second on every replica).
CREATE TABLE ledger_settings (
  singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  hold_grace  interval NOT NULL DEFAULT interval '10 seconds'
);
INSERT INTO ledger_settings DEFAULT VALUES;

-- ------------------------------------------------------------------ guards

CREATE FUNCTION forbid_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'creditgate.%: % is forbidden (append-only)', TG_TABLE_NAME, TG_OP;
END $$;
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal
  FOR EACH ROW EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON journal
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER holds_no_delete BEFORE DELETE ON holds FOR EACH ROW EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER holds_no_truncate BEFORE TRUNCATE ON holds FOR EACH STATEMENT EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER usage_no_delete BEFORE DELETE ON usage_records FOR EACH ROW EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON usage_records
  FOR EACH STATEMENT EXECUTE FUNCTION forbid_mutation();

-- pending -> posted | voided | expired, exactly once; what was held is immutable.
CREATE FUNCTION holds_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.state <> NEW.state AND OLD.state <> 'pending' THEN
    RAISE EXCEPTION 'illegal hold transition % -> %', OLD.state, NEW.state;
  END IF;
  IF (OLD.org_id, OLD.request_id, OLD.user_id, OLD.amount, OLD.period_start, OLD.input_rate, OLD.output_rate,
      OLD.prompt_tokens, OLD.byok)
     IS DISTINCT FROM (NEW.org_id, NEW.request_id, NEW.user_id, NEW.amount, NEW.period_start, NEW.input_rate,
      NEW.output_rate, NEW.prompt_tokens, NEW.byok) THEN
    RAISE EXCEPTION 'hold % identity fields are immutable', OLD.id;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER holds_guard BEFORE UPDATE ON holds FOR EACH ROW EXECUTE FUNCTION holds_guard();

-- A usage record changes at most once: an estimate (sweeper) replaced by the real usage.
CREATE FUNCTION usage_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT OLD.estimated OR NEW.estimated OR (OLD.org_id, OLD.request_id, OLD.hold_id)
     IS DISTINCT FROM (NEW.org_id, NEW.request_id, NEW.hold_id) THEN
    RAISE EXCEPTION 'usage record %/% is final', OLD.org_id, OLD.request_id;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER usage_guard BEFORE UPDATE ON usage_records FOR EACH ROW EXECUTE FUNCTION usage_guard();

CREATE FUNCTION grants_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.expired_at IS NOT NULL OR (OLD.org_id, OLD.kind, OLD.idempotency_key, OLD.amount, OLD.expires_at)
     IS DISTINCT FROM (NEW.org_id, NEW.kind, NEW.idempotency_key, NEW.amount, NEW.expires_at) THEN
    RAISE EXCEPTION 'grant % is immutable except for its one expiry', OLD.id;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER grants_guard BEFORE UPDATE ON grants FOR EACH ROW EXECUTE FUNCTION grants_guard();
CREATE TRIGGER grants_no_delete BEFORE DELETE ON grants FOR EACH ROW EXECUTE FUNCTION forbid_mutation();

-- ------------------------------------------------------------------ operations

-- A request id is in use in an org while it has a hold that was not voided, or a usage record (a
-- voided hold that was settled late). One index probe in the common case of a new id.
CREATE FUNCTION in_use(p_org text, p_rid text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = creditgate, pg_temp AS $$
DECLARE s hold_state;
BEGIN
  SELECT state INTO s FROM holds WHERE org_id = p_org AND request_id = p_rid ORDER BY state = 'voided' LIMIT 1;
  RETURN FOUND AND (s <> 'voided' OR EXISTS (SELECT 1 FROM usage_records WHERE org_id = p_org AND request_id = p_rid));
END $$;

-- Group commit: one transaction for the reserves and settles of any number of orgs (items sorted by
-- org keep it to two pool updates per org). Locks follow the global order for the WHOLE batch: the
-- settled holds (by id), then every allocation row (sorted), then every pool (sorted); only then are
-- the items applied, settles first (they release credit), then reserves. Every item gets a result
-- row; refusals are results, not exceptions.
-- reserve statuses: held | not_a_member | suspended | request_id_in_use | org_pool_exhausted |
--                   user_allocation_exhausted
-- settle statuses:  posted | late_posted | already_settled | conflict | not_found
-- `remaining` (settles) = min(pool available, the member's allocation available) after the batch.
CREATE FUNCTION ledger_batch(
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
  cur text; have_pool boolean := false; pl pools; g bigint; p bigint; pe bigint; ov bigint; v bigint;
  h holds; u usage_records; m record; org_suspended boolean; susp_org text;
  k_orgs text[]; k_users text[]; k_periods timestamptz[];
  i int; c bigint; cov bigint; over bigint; delta bigint; rel bigint; u_dov bigint; ps timestamptz;
  used bigint; hid bigint; st text;
  o_op text[] := '{}'; o_idx int[] := '{}'; o_status text[] := '{}'; o_amount bigint[] := '{}';
  o_charged bigint[] := '{}'; o_org text[] := '{}'; o_user text[] := '{}';
  -- journal entries, written with one INSERT at the end
  j_org text[] := '{}'; j_ver bigint[] := '{}'; j_kind text[] := '{}'; j_amount bigint[] := '{}';
  j_dp bigint[] := '{}'; j_dpe bigint[] := '{}'; j_dov bigint[] := '{}'; j_rid text[] := '{}'; j_user text[] := '{}';
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
        UPDATE pools SET posted = p, pending = pe, overage = ov, version = v WHERE org_id = cur;
      END IF;
      cur := s_org[i];
      SELECT * INTO pl FROM pools WHERE org_id = cur;
      have_pool := FOUND;
      g := pl.granted; p := pl.posted; pe := pl.pending; ov := pl.overage; v := pl.version;
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
    ELSIF u.request_id IS NOT NULL THEN
      -- the sweeper settled this hold from its checkpoint; the real usage replaces that estimate once
      delta := c - u.charged;
      IF delta >= 0 THEN
        cov := least(delta, greatest(g - p - pe - ov, 0)); over := delta - cov; u_dov := -over;
      ELSE
        rel := -delta; over := -least(ov, rel); cov := -(rel + over); u_dov := least(u.overage, rel);
      END IF;
      p := p + cov; ov := ov + over; v := v + 1;
      UPDATE usage_records SET prompt_tokens = s_prompt[i], completion_tokens = s_completion[i], charged = c,
             covered = c - (u.overage - u_dov), overage = u.overage - u_dov, list_price = s_list[i],
             usage_source = s_source[i], model = s_model[i], provider = s_provider[i],
             deployment = s_deployment[i], estimated = false, corrected_at = t
       WHERE org_id = cur AND request_id = s_rid[i];
      UPDATE allocation_usage SET posted = posted + delta
       WHERE org_id = cur AND user_id = h.user_id AND period_start = h.period_start;
      j_org := j_org || cur; j_ver := j_ver || v; j_kind := j_kind || 'correction'::text;
      j_amount := j_amount || delta; j_dp := j_dp || cov; j_dpe := j_dpe || 0::bigint; j_dov := j_dov || over;
      j_rid := j_rid || h.request_id; j_user := j_user || h.user_id;
      st := 'late_posted';
    ELSE
      IF h.state = 'pending' THEN
        cov := least(c, h.amount); over := c - cov;
        pe := pe - h.amount;
        UPDATE holds SET state = 'posted', resolved_at = t WHERE id = h.id;
        UPDATE allocation_usage SET pending = pending - h.amount, posted = posted + c
         WHERE org_id = cur AND user_id = h.user_id AND period_start = h.period_start;
        st := 'posted';
      ELSE  -- voided: usage is never dropped; covered by what credit is left, the rest is overage
        cov := least(c, greatest(g - p - pe - ov, 0)); over := c - cov;
        UPDATE allocation_usage SET posted = posted + c
         WHERE org_id = cur AND user_id = h.user_id AND period_start = h.period_start;
        st := 'late_posted';
      END IF;
      p := p + cov; ov := ov + over; v := v + 1;
      INSERT INTO usage_records (org_id, request_id, hold_id, user_id, key_id, model, provider, deployment,
             prompt_tokens, completion_tokens, charged, covered, overage, list_price, usage_source, byok,
             period_start, recorded_at)
      VALUES (cur, h.request_id, h.id, h.user_id, h.key_id, s_model[i], s_provider[i], s_deployment[i],
             s_prompt[i], s_completion[i], c, cov, over, s_list[i], s_source[i], h.byok, h.period_start, t);
      j_org := j_org || cur; j_ver := j_ver || v;
      j_kind := j_kind || CASE WHEN st = 'posted' THEN 'post' ELSE 'late_post' END;
      j_amount := j_amount || c; j_dp := j_dp || cov; j_dpe := j_dpe || CASE WHEN st = 'posted' THEN -h.amount ELSE 0 END;
      j_dov := j_dov || over; j_rid := j_rid || h.request_id; j_user := j_user || h.user_id;
    END IF;
    o_op := o_op || 'settle'::text; o_idx := o_idx || i; o_status := o_status || st; o_amount := o_amount || h.amount;
    o_charged := o_charged || c; o_org := o_org || cur; o_user := o_user || h.user_id;
  END LOOP;

  FOR i IN 1 .. coalesce(array_length(r_rid, 1), 0) LOOP
    IF r_org[i] IS DISTINCT FROM cur THEN
      IF have_pool AND v <> pl.version THEN
        UPDATE pools SET posted = p, pending = pe, overage = ov, version = v WHERE org_id = cur;
      END IF;
      cur := r_org[i];
      SELECT * INTO pl FROM pools WHERE org_id = cur;
      have_pool := FOUND;
      g := pl.granted; p := pl.posted; pe := pl.pending; ov := pl.overage; v := pl.version;
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
        j_amount := j_amount || r_amount[i]; j_dp := j_dp || 0::bigint; j_dpe := j_dpe || r_amount[i];
        j_dov := j_dov || 0::bigint; j_rid := j_rid || r_rid[i]; j_user := j_user || r_user[i];
        st := 'held';
      END IF;
    END IF;
    o_op := o_op || 'reserve'::text; o_idx := o_idx || i; o_status := o_status || st;
    o_amount := o_amount || CASE WHEN st = 'held' THEN r_amount[i] END; o_charged := o_charged || NULL::bigint;
    o_org := o_org || cur; o_user := o_user || NULL::text;
  END LOOP;
  IF have_pool AND v <> pl.version THEN
    UPDATE pools SET posted = p, pending = pe, overage = ov, version = v WHERE org_id = cur;
  END IF;
  INSERT INTO journal (org_id, version, kind, amount, d_posted, d_pending, d_overage, request_id, user_id, created_at)
  SELECT jo, jv, jk, ja, jp, jpe, jov, jr, ju, t
    FROM unnest(j_org, j_ver, j_kind, j_amount, j_dp, j_dpe, j_dov, j_rid, j_user) AS j(jo, jv, jk, ja, jp, jpe, jov, jr, ju);

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

-- Release a pending hold entirely (nothing was served): no usage record. Idempotent; never voids a
-- settled or expired hold. With p_owner, only the hold that reserve call created is voided (a
-- reserve whose outcome is unknown must not release a same-id hold of another request).
-- Returns voided | already_voided | already_posted | already_expired | not_found | not_owner.
CREATE FUNCTION void_hold(p_org text, p_rid text, p_owner text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE h holds; t timestamptz := creditgate.now(); v bigint;
BEGIN
  SELECT * INTO h FROM holds WHERE org_id = p_org AND request_id = p_rid
   ORDER BY state = 'voided', id DESC LIMIT 1 FOR NO KEY UPDATE;
  IF NOT FOUND THEN RETURN 'not_found'; END IF;
  IF p_owner IS NOT NULL AND h.owner IS DISTINCT FROM p_owner THEN RETURN 'not_owner'; END IF;
  IF h.state <> 'pending' THEN RETURN 'already_' || h.state::text; END IF;
  PERFORM 1 FROM allocation_usage WHERE org_id = p_org AND user_id = h.user_id AND period_start = h.period_start
     FOR NO KEY UPDATE;
  UPDATE allocation_usage SET pending = pending - h.amount
   WHERE org_id = p_org AND user_id = h.user_id AND period_start = h.period_start;
  UPDATE pools SET pending = pending - h.amount, version = version + 1 WHERE org_id = p_org RETURNING version INTO v;
  INSERT INTO journal (org_id, version, kind, amount, d_pending, request_id, user_id, created_at)
  VALUES (p_org, v, 'void', h.amount, -h.amount, h.request_id, h.user_id, t);
  UPDATE holds SET state = 'voided', resolved_at = t WHERE id = h.id;
  RETURN 'voided';
END $$;

-- Renew a streaming hold and record the tokens streamed so far. Touches only the hold row; a lost
-- checkpoint only shortens a TTL, so this is the one place asynchronous commit is acceptable.
CREATE FUNCTION checkpoint_hold(p_org text, p_rid text, p_tokens bigint, p_ttl_seconds double precision)
RETURNS boolean LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  UPDATE holds SET expires_at = greatest(expires_at, creditgate.now() + make_interval(secs => p_ttl_seconds)),
                   streamed_tokens = greatest(streamed_tokens, p_tokens)
   WHERE org_id = p_org AND request_id = p_rid AND state = 'pending';
  RETURN FOUND;
END $$;

-- The sweeper: settle up to p_limit pending holds past their expiry from the database alone
-- (charge = ceil(prompt * input_rate + streamed * output_rate), overage as settle does), state expired.
-- SKIP LOCKED lets every replica run it; the batch locks all allocations, then all pools, sorted.
CREATE FUNCTION expire_holds(p_limit int) RETURNS int
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE ids bigint[]; h holds; t timestamptz := creditgate.now(); c bigint; lp bigint; cov bigint;
        over bigint; v bigint; n int := 0;
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
    UPDATE allocation_usage SET pending = pending - h.amount, posted = posted + c
     WHERE org_id = h.org_id AND user_id = h.user_id AND period_start = h.period_start;
    UPDATE pools SET pending = pending - h.amount, posted = posted + cov, overage = overage + over,
           version = version + 1 WHERE org_id = h.org_id RETURNING version INTO v;
    INSERT INTO journal (org_id, version, kind, amount, d_posted, d_pending, d_overage, request_id, user_id,
           created_at)
    VALUES (h.org_id, v, 'expire', c, cov, -h.amount, over, h.request_id, h.user_id, t);
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

-- Forfeit what is left of expired grants. Rule: expiring credit is drawn first, so
-- forfeit = clamp(available - face value of the org's other live positive credits, 0, grant amount).
-- Credit still held by in-flight requests at expiry is not forfeited (available excludes it).
CREATE FUNCTION expire_grants(p_limit int) RETURNS int
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE ids bigint[]; gr grants; pl pools; t timestamptz := creditgate.now(); live bigint; f bigint;
        n int := 0;
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
    UPDATE grants SET expired_at = t, forfeited = f WHERE id = gr.id;
    UPDATE pools SET granted = granted - f, version = version + 1 WHERE org_id = gr.org_id;
    INSERT INTO journal (org_id, version, kind, amount, d_granted, actor, reason, grant_id, created_at)
    VALUES (gr.org_id, pl.version + 1, 'grant_expiry', f, -f, 'sweeper', 'grant expired', gr.id, t);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$;

-- Credit in (kind grant, amount > 0, optional expiry) or a signed correction (kind adjustment),
-- idempotent by (org, idempotency key). Positive amounts net outstanding overage first; a negative
-- adjustment may not exceed available credit. Raises CG404 unknown org, CG400 invalid, CG409 replay with
-- different fields, CG402 not enough available credit. Returns the grant id and whether it was a replay.
CREATE FUNCTION add_credit(p_org text, p_kind text, p_amount bigint, p_reason text, p_key text,
                           p_expires timestamptz, p_actor text)
RETURNS TABLE (grant_id bigint, replayed boolean)
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE gr grants; pl pools; t timestamptz := creditgate.now(); net bigint;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pools WHERE org_id = p_org) THEN
    RAISE EXCEPTION USING ERRCODE = 'CG404', MESSAGE = 'unknown organization';
  END IF;
  IF p_amount = 0 OR (p_kind = 'grant' AND p_amount < 0) THEN
    RAISE EXCEPTION USING ERRCODE = 'CG400', MESSAGE = 'amount must be positive';
  END IF;
  IF p_expires IS NOT NULL AND p_expires <= t THEN
    RAISE EXCEPTION USING ERRCODE = 'CG400', MESSAGE = 'expires_at must be in the future';
  END IF;
  INSERT INTO grants (org_id, kind, idempotency_key, amount, reason, actor, expires_at, created_at)
  VALUES (p_org, p_kind, p_key, p_amount, p_reason, p_actor, p_expires, t)
  ON CONFLICT (org_id, idempotency_key) DO NOTHING RETURNING * INTO gr;
  IF NOT FOUND THEN
    SELECT * INTO gr FROM grants WHERE org_id = p_org AND idempotency_key = p_key;
    IF (gr.kind, gr.amount, gr.reason, gr.expires_at) IS DISTINCT FROM (p_kind, p_amount, p_reason, p_expires) THEN
      RAISE EXCEPTION USING ERRCODE = 'CG409', MESSAGE = 'idempotency key reused with different fields';
    END IF;
    RETURN QUERY SELECT gr.id, true; RETURN;
  END IF;
  SELECT * INTO pl FROM pools WHERE org_id = p_org FOR NO KEY UPDATE;
  IF p_amount < 0 AND pl.granted - pl.posted - pl.pending - pl.overage < -p_amount THEN
    RAISE EXCEPTION USING ERRCODE = 'CG402', MESSAGE = 'adjustment exceeds available credit';
  END IF;
  net := least(pl.overage, greatest(p_amount, 0));
  UPDATE pools SET granted = granted + p_amount, posted = posted + net, overage = overage - net,
         version = version + 1 WHERE org_id = p_org;
  INSERT INTO journal (org_id, version, kind, amount, d_granted, d_posted, d_overage, actor, reason, grant_id,
         created_at)
  VALUES (p_org, pl.version + 1, p_kind, p_amount, p_amount, net, -net, p_actor, p_reason, gr.id, t);
  RETURN QUERY SELECT gr.id, false;
END $$;

-- ------------------------------------------------------------------ audit

-- One row per violated invariant (empty = healthy). `creditgate verify` prints it.
CREATE VIEW invariant_violations AS
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
SELECT 'database_clock_not_skewed', 'clock_skew', 'skew ' || skew FROM clock_skew;
