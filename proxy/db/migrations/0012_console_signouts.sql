-- Console sign-out (proxy/console/signouts.py): a signed-out session's nonce, kept until the session would
-- have expired, so a copy of its cookie is refused on every replica. Not org data: one row per sign-out.
SET LOCAL search_path = creditgate;

CREATE TABLE console_signouts (
  nonce       text PRIMARY KEY CHECK (length(nonce) BETWEEN 1 AND 64),
  expires_at  timestamptz NOT NULL
);
CREATE INDEX console_signouts_expiry ON console_signouts (expires_at);
