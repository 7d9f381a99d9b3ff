-- Finance receives every change of granted credit (proxy/export/): grants and adjustments since 0009, and
-- now the forfeits of expired grants (journal kind grant_expiry): what a grant forfeits when it expires, the
-- expired credit a request's hold released later (forfeited then), and forfeited credit restored when a late
-- charge turns out to have spent it (a negative amount). One event per journal entry, `credit_grant_expiry`,
-- transaction id `grant_expiry#<grant>#<org version>` (an org's journal version is unique).
SET LOCAL search_path = creditgate;

ALTER TABLE export_outbox DROP CONSTRAINT export_outbox_code_check, ADD CONSTRAINT export_outbox_code_check
  CHECK (code IN ('llm_usage', 'llm_usage_correction', 'credit_grant', 'credit_adjustment', 'credit_grant_expiry',
                  'budget_alert'));

CREATE OR REPLACE FUNCTION export_credit() RETURNS trigger
LANGUAGE plpgsql SET search_path = creditgate, pg_temp AS $$
DECLARE expires timestamptz;
BEGIN
  IF NOT export_on() THEN RETURN NULL; END IF;
  SELECT expires_at INTO expires FROM grants WHERE org_id = NEW.org_id AND id = NEW.grant_id;
  IF NEW.kind = 'grant_expiry' THEN
    PERFORM export_enqueue(NEW.org_id, 'credit_grant_expiry',
      'grant_expiry#' || coalesce(NEW.grant_id::text, '') || '#' || NEW.version,  -- never NULL: never fails the money
      NEW.created_at,
      jsonb_build_object('grant_id', NEW.grant_id, 'amount_millicredits', NEW.amount, 'reason', NEW.reason,
                         'actor', NEW.actor, 'request_id', NEW.request_id, 'expires_at', export_time(expires)));
  ELSE
    PERFORM export_enqueue(NEW.org_id, 'credit_' || NEW.kind, NEW.kind || '#' || NEW.grant_id, NEW.created_at,
      jsonb_build_object('grant_id', NEW.grant_id, 'amount_millicredits', NEW.amount, 'reason', NEW.reason,
                         'actor', NEW.actor, 'expires_at', export_time(expires)));
  END IF;
  RETURN NULL;
END $$;

DROP TRIGGER journal_export_credit ON journal;
CREATE TRIGGER journal_export_credit AFTER INSERT ON journal FOR EACH ROW
  WHEN (NEW.kind IN ('grant', 'adjustment', 'grant_expiry')) EXECUTE FUNCTION export_credit();
