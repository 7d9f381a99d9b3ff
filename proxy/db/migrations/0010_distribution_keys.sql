-- Distribution keys (issue 13, docs/scaling.md): every table distributed by org starts its primary key with
-- org_id, and the foreign keys between them carry it, as Citus requires of colocated distributed tables.
-- Nothing else changes on one PostgreSQL: each former primary key on id keeps a plain index, so the
-- statements that find a row by id stay index lookups. tests/db/test_distribution.py keeps it so.
SET LOCAL search_path = creditgate;

ALTER TABLE held_expired_credit DROP CONSTRAINT held_expired_credit_hold_id_fkey,
  DROP CONSTRAINT held_expired_credit_grant_id_fkey;

ALTER TABLE holds DROP CONSTRAINT holds_pkey, ADD PRIMARY KEY (org_id, id);
CREATE INDEX holds_id ON holds (id);
ALTER TABLE grants DROP CONSTRAINT grants_pkey, ADD PRIMARY KEY (org_id, id);
CREATE INDEX grants_id ON grants (id);
ALTER TABLE journal DROP CONSTRAINT journal_pkey, ADD PRIMARY KEY (org_id, id);
ALTER TABLE held_expired_credit DROP CONSTRAINT held_expired_credit_pkey, ADD PRIMARY KEY (org_id, id);
CREATE INDEX held_expired_credit_id ON held_expired_credit (id);

ALTER TABLE held_expired_credit ADD FOREIGN KEY (org_id, hold_id) REFERENCES holds (org_id, id),
  ADD FOREIGN KEY (org_id, grant_id) REFERENCES grants (org_id, id);

ALTER TABLE response_owners DROP CONSTRAINT response_owners_pkey, ADD PRIMARY KEY (org_id, response_id);
