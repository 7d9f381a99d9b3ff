"""The operator's admin API and the org admins' lane in it (CONTRACT.md, Operator's admin API): `routes`
mounts them, `auth` decides who may do what, `orgs` and `people` are the handlers (their bodies are
declared in proxy/api/bodies.py), `input` checks path ids and emails, `deps` what they share. Imports
`api`, `config`, `directory` and `ledger`.
"""
