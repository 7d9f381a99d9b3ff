# creditgate: the gateway alone. PostgreSQL, Redis and LiteLLM run beside it (deploy/docker-compose.yml,
# deploy/kubernetes/). The operator's litellm_config.yaml and policy.yaml are mounted at /etc/creditgate/;
# migrations are their own step (`creditgate migrate`, a Job or a one-shot service), never run by `serve`.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/creditgate
WORKDIR /src
# every dependency pinned with its hashes (`make lock` regenerates the file from pyproject.toml)
COPY requirements.lock ./
RUN /opt/creditgate/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml ./
COPY proxy ./proxy
COPY policies ./policies
RUN /opt/creditgate/bin/pip install --no-deps . \
 && /opt/creditgate/bin/pip check

FROM python:3.11-slim
# the settlement spool (settlements PostgreSQL could not take yet) is the only thing written to disk: give it
# a volume that outlives the container (deploy/ does)
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin creditgate \
 && install -d -o 10001 -g 10001 /var/lib/creditgate /var/lib/creditgate/spool
COPY --from=build /opt/creditgate /opt/creditgate
WORKDIR /var/lib/creditgate
ENV PATH=/opt/creditgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CREDITGATE_HOST=0.0.0.0 \
    CREDITGATE_PORT=8080 \
    CREDITGATE_LITELLM_CONFIG=/etc/creditgate/litellm_config.yaml \
    CREDITGATE_POLICY_CONFIG=/etc/creditgate/policy.yaml \
    CREDITGATE_SPOOL_DIR=/var/lib/creditgate/spool
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["creditgate", "healthcheck"]
CMD ["creditgate", "serve"]
