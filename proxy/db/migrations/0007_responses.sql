-- Responses API (issue 12): which org and member each response id served through the gateway belongs to.
--
-- LiteLLM serves GET/DELETE /v1/responses/{id} and `previous_response_id` with the platform's key, so it
-- would hand any caller any response. The gateway answers those only for an id it recorded for the caller
-- (proxy/directory/responses.py); any other id is 404 without asking LiteLLM. Written once per served
-- response, after its answer; a DELETE marks it deleted (the id stays owned: it is never reused).
SET LOCAL search_path = creditgate;

CREATE TABLE response_owners (
  response_id  text PRIMARY KEY CHECK (length(response_id) BETWEEN 1 AND 1024),
  org_id       text NOT NULL REFERENCES orgs(id),
  user_id      text NOT NULL REFERENCES users(id),
  request_id   text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  deleted_at   timestamptz
);
CREATE INDEX response_owners_member ON response_owners (org_id, user_id);
