"""Configuration: `settings` (the CREDITGATE_* environment), `policy` (the policy file), `modellist` (the
LiteLLM config's model_list as written), `modelinfo` (LiteLLM's /model/info, read exactly, and its wildcard
routing rules), `catalogue` (models, deployments and prices: the config completed by model info), `live`
(the snapshot a request runs under and its price version) and `reload` (swapping it on SIGHUP, a changed
file or new model info). Imports nothing of creditgate's but `proxy.errors`.
"""
