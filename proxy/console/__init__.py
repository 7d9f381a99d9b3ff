"""The /console web UI: server-rendered pages of an org's pool, members, usage, requests, ledger and keys for
org admins and the operator, and the operator's one-form onboarding, on the admin API's stores and rules."""
