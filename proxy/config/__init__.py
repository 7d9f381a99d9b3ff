"""Configuration: `settings` (the CREDITGATE_* environment), `policy` (the policy file), `catalogue`
(models, deployments and prices from the LiteLLM config). Imports nothing of creditgate's but
`proxy.errors`.
"""
