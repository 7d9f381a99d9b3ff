-- Usage export and budget alerts (issue 11).
--
-- The outbox: every settlement (a usage record inserted), every correction of an estimate (the one update a
-- usage record may have), every grant and adjustment (journal entries) and every budget alert is written to
-- export_outbox by a trigger, in the transaction that made it, so an event exists exactly when the money
-- moved. proxy/export/deliver.py posts the rows to CREDITGATE_EXPORT_URL, at least once. Nothing here is
-- read by the ledger: the ledger functions are unchanged.
--
-- Budget alerts: thresholds (percent) per org for the pool and for each member's allocation, fired once per
-- threshold per period by triggers on pools and allocation_usage (the rows every reserve and settle
-- changes, in the same transaction), recorded in budget_alerts and exported as "budget_alert" events.
-- Every table has org_id first in its primary key (distributable by org).
SET LOCAL search_path = creditgate;

-- Whether settlements are written to the outbox: false until a replica with CREDITGATE_EXPORT_URL starts
-- (proxy/export/outbox.py `enable`), so a deployment without export pays nothing and keeps no rows.
CREATE TABLE export_settings (
  singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  enabled    boolean NOT NULL DEFAULT false
);
INSERT INTO export_settings DEFAULT VALUES;

-- One event. transaction_id is the receiver's idempotency key: the request id for usage, ids with a '#'
-- (never in a request id) for the rest. Scheduling columns use the real clock (pg_catalog.now()).
CREATE TABLE export_outbox (
  org_id           text NOT NULL,
  id               bigint GENERATED ALWAYS AS IDENTITY,
  code             text NOT NULL CHECK (code IN ('llm_usage', 'llm_usage_correction', 'credit_grant',
                                                 'credit_adjustment', 'budget_alert')),
  transaction_id   text NOT NULL,
  occurred_at      timestamptz NOT NULL,
  properties       jsonb NOT NULL,
  attempts         integer NOT NULL DEFAULT 0,
  next_attempt_at  timestamptz NOT NULL,
  last_status      integer,           -- the receiver's last HTTP status, NULL for a transport failure
  last_error       text,              -- why the last attempt failed (no URL, no secret)
  delivered_at     timestamptz,
  dead_at          timestamptz,       -- dead-lettered: no more attempts until an operator retries it
  created_at       timestamptz NOT NULL,
  PRIMARY KEY (org_id, id),
  UNIQUE (org_id, code, transaction_id)
);
CREATE INDEX export_outbox_due ON export_outbox (next_attempt_at) WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX export_outbox_dead ON export_outbox (id) WHERE dead_at IS NOT NULL;
CREATE INDEX export_outbox_delivered ON export_outbox (delivered_at) WHERE delivered_at IS NOT NULL;

CREATE FUNCTION export_on() RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT coalesce((SELECT enabled FROM creditgate.export_settings), false)
$$;

-- Never fails the money transaction: a duplicate is ignored (it is the same event).
-- RFC 3339 in UTC whatever the session's TimeZone (to_jsonb would follow it).
CREATE FUNCTION export_time(t timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$$;

CREATE FUNCTION export_enqueue(p_org text, p_code text, p_tid text, p_at timestamptz, p_props jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
BEGIN
  INSERT INTO export_outbox (org_id, code, transaction_id, occurred_at, properties, next_attempt_at, created_at)
  VALUES (p_org, p_code, p_tid, p_at, p_props, pg_catalog.now(), pg_catalog.now())
  ON CONFLICT (org_id, code, transaction_id) DO NOTHING;
  PERFORM pg_notify('creditgate_export', '');  -- one wake-up per transaction (identical payloads fold)
END $$;

-- A settlement (INSERT) or the correction of the sweeper's estimate (the one UPDATE usage_guard allows).
-- end_user and tags are read through to_jsonb so the trigger works with or without those columns.
CREATE FUNCTION export_usage() RETURNS trigger
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE r jsonb; props jsonb;
BEGIN
  IF NOT export_on() THEN RETURN NULL; END IF;
  r := to_jsonb(NEW);
  props := jsonb_build_object(
    'request_id', NEW.request_id, 'model', NEW.model, 'provider', NEW.provider, 'deployment', NEW.deployment,
    'prompt_tokens', NEW.prompt_tokens, 'completion_tokens', NEW.completion_tokens,
    'charged_millicredits', NEW.charged, 'list_price_millicredits', NEW.list_price,
    'overage_millicredits', NEW.overage, 'usage_source', NEW.usage_source, 'estimated', NEW.estimated,
    'byok', NEW.byok, 'user_id', NEW.user_id, 'key_id', NEW.key_id, 'price_version', r -> 'price_version',
    'end_user', r -> 'end_user', 'tags', r -> 'tags', 'period_start', export_time(NEW.period_start));
  IF TG_OP = 'INSERT' THEN
    PERFORM export_enqueue(NEW.org_id, 'llm_usage', NEW.request_id, NEW.recorded_at, props);
  ELSE
    PERFORM export_enqueue(NEW.org_id, 'llm_usage_correction', NEW.request_id || '#correction',
      coalesce(NEW.corrected_at, NEW.recorded_at),
      props || jsonb_build_object('corrects', NEW.request_id, 'previous_charged_millicredits', OLD.charged,
                                  'delta_millicredits', NEW.charged - OLD.charged,
                                  'previous_usage_source', OLD.usage_source));
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER usage_export_insert AFTER INSERT ON usage_records FOR EACH ROW EXECUTE FUNCTION export_usage();
CREATE TRIGGER usage_export_correction AFTER UPDATE ON usage_records FOR EACH ROW
  WHEN (OLD.estimated AND NOT NEW.estimated) EXECUTE FUNCTION export_usage();

-- Credit in (kind grant) and signed corrections such as refunds (kind adjustment).
CREATE FUNCTION export_credit() RETURNS trigger
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
BEGIN
  IF NOT export_on() THEN RETURN NULL; END IF;
  PERFORM export_enqueue(NEW.org_id, 'credit_' || NEW.kind, NEW.kind || '#' || NEW.grant_id, NEW.created_at,
    jsonb_build_object('grant_id', NEW.grant_id, 'amount_millicredits', NEW.amount, 'reason', NEW.reason,
                       'actor', NEW.actor,
                       'expires_at', export_time((SELECT expires_at FROM grants WHERE id = NEW.grant_id))));
  RETURN NULL;
END $$;
CREATE TRIGGER journal_export_credit AFTER INSERT ON journal FOR EACH ROW
  WHEN (NEW.kind IN ('grant', 'adjustment')) EXECUTE FUNCTION export_credit();

-- ------------------------------------------------------------------ budget alerts

-- Per org; an org without a row uses the defaults below. An empty array turns that scope's alerts off.
CREATE TABLE budget_thresholds (
  org_id      text PRIMARY KEY,
  pool        integer[] NOT NULL,
  allocation  integer[] NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
  CHECK (1 <= ALL (pool) AND 100 >= ALL (pool) AND 1 <= ALL (allocation) AND 100 >= ALL (allocation)),
  CHECK (cardinality(pool) <= 10 AND cardinality(allocation) <= 10)
);

-- One row per (scope, member, threshold, period): the unique key makes firing idempotent across replicas.
-- user_id is '' for the pool. period_start: the allocation's period; for the pool, the time of its latest
-- grant (a top-up starts a new period). used/budget: what crossed the threshold, in millicredits.
CREATE TABLE budget_alerts (
  org_id        text NOT NULL,
  id            bigint GENERATED ALWAYS AS IDENTITY,
  scope         text NOT NULL CHECK (scope IN ('pool', 'allocation')),
  user_id       text NOT NULL,
  threshold     integer NOT NULL,
  period_start  timestamptz NOT NULL,
  used          bigint NOT NULL,
  budget        bigint NOT NULL,
  fired_at      timestamptz NOT NULL,
  counted       boolean NOT NULL DEFAULT false,  -- taken into creditgate_budget_alerts_total by one replica
  PRIMARY KEY (org_id, id),
  UNIQUE (org_id, scope, user_id, threshold, period_start)
);
CREATE INDEX budget_alerts_uncounted ON budget_alerts (id) WHERE NOT counted;

CREATE FUNCTION fire_budget_alerts(p_org text, p_scope text, p_user text, p_used bigint, p_budget bigint,
                                   p_period timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE levels integer[]; th integer; a budget_alerts; t timestamptz;
BEGIN
  IF p_used <= 0 OR p_used::numeric * 100 < p_budget THEN RETURN; END IF;  -- under 1 %: no threshold crossed
  SELECT CASE WHEN p_scope = 'pool' THEN pool ELSE allocation END INTO levels
    FROM budget_thresholds WHERE org_id = p_org;
  IF NOT FOUND THEN levels := ARRAY[50, 80, 100]; END IF;
  FOREACH th IN ARRAY levels LOOP
    CONTINUE WHEN p_used <= 0 OR p_used::numeric * 100 < th::numeric * p_budget;
    a := NULL;
    t := coalesce(t, creditgate.now());  -- read once, only when a threshold is crossed (most calls cross none)
    INSERT INTO budget_alerts (org_id, scope, user_id, threshold, period_start, used, budget, fired_at)
    VALUES (p_org, p_scope, p_user, th, p_period, p_used, p_budget, t)
    ON CONFLICT (org_id, scope, user_id, threshold, period_start) DO NOTHING RETURNING * INTO a;
    IF a.id IS NOT NULL AND export_on() THEN
      PERFORM export_enqueue(p_org, 'budget_alert', 'alert#' || a.id, t, jsonb_build_object(
        'alert_id', a.id, 'scope', p_scope, 'user_id', nullif(p_user, ''), 'threshold_percent', th,
        'used_millicredits', p_used, 'budget_millicredits', p_budget, 'period_start', export_time(p_period)));
    END IF;
  END LOOP;
END $$;

-- The pool: spent + held (posted + pending + overage) against granted, when either moves the wrong way.
CREATE FUNCTION pool_budget_alerts() RETURNS trigger
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE used bigint := NEW.posted + NEW.pending + NEW.overage; since timestamptz;
BEGIN
  IF used = 0 OR used::numeric * 100 < NEW.granted THEN RETURN NULL; END IF;  -- under 1 %: nothing to cross
  SELECT coalesce(max(created_at), timestamptz '1970-01-01 00:00:00+00') INTO since
    FROM grants WHERE org_id = NEW.org_id AND kind = 'grant';
  PERFORM fire_budget_alerts(NEW.org_id, 'pool', '', used, NEW.granted, since);
  RETURN NULL;
END $$;
CREATE TRIGGER pools_budget_alerts AFTER UPDATE ON pools FOR EACH ROW
  WHEN (NEW.posted + NEW.pending + NEW.overage > OLD.posted + OLD.pending + OLD.overage
        OR NEW.granted < OLD.granted)
  EXECUTE FUNCTION pool_budget_alerts();

-- A member's allocation: posted + pending in the period against the membership's limit (none: no alerts).
CREATE FUNCTION allocation_budget_alerts() RETURNS trigger
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE lim bigint;
BEGIN
  SELECT allocation_millicredits INTO lim FROM memberships WHERE org_id = NEW.org_id AND user_id = NEW.user_id;
  IF lim IS NOT NULL THEN
    PERFORM fire_budget_alerts(NEW.org_id, 'allocation', NEW.user_id, NEW.posted + NEW.pending, lim,
                               NEW.period_start);
  END IF;
  RETURN NULL;
END $$;
-- only when the use grows: a settle (a hold released, at most as much posted) never crosses a threshold
CREATE TRIGGER allocation_budget_alerts AFTER INSERT ON allocation_usage FOR EACH ROW
  WHEN (NEW.posted + NEW.pending > 0) EXECUTE FUNCTION allocation_budget_alerts();
CREATE TRIGGER allocation_budget_alerts_grow AFTER UPDATE ON allocation_usage FOR EACH ROW
  WHEN (NEW.posted + NEW.pending > OLD.posted + OLD.pending) EXECUTE FUNCTION allocation_budget_alerts();
