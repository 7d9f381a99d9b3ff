"""The usage export and budget alerts (issue 11): the outbox the ledger's triggers fill in the transaction
of each settlement (proxy/db/migrations/0009_export.sql), its delivery, and the alerts' reads."""
