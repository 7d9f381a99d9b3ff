"""The operator's admin API and the org admins' lane in it (CONTRACT.md, Operator's admin API): `routes`
mounts them, `auth` decides who may do what, `orgs` and `people` are the handlers, `input` reads their
bodies, `deps` what they share. Imports `api`, `config`, `directory` and `ledger`.
"""
