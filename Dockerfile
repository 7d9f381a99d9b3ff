# creditgate: the gateway alone (PostgreSQL, Redis and LiteLLM run beside it).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY proxy ./proxy
COPY policies ./policies
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 creditgate
COPY --from=build /install /usr/local
COPY litellm_config.yaml policy.yaml /etc/creditgate/
ENV CREDITGATE_HOST=0.0.0.0 \
    CREDITGATE_PORT=8080 \
    CREDITGATE_LITELLM_CONFIG=/etc/creditgate/litellm_config.yaml \
    CREDITGATE_POLICY_CONFIG=/etc/creditgate/policy.yaml \
    PYTHONUNBUFFERED=1
USER creditgate
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,os;urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"CREDITGATE_PORT\"]}/healthz',timeout=2)"
# migrations are idempotent and safe to run from every replica (advisory lock)
CMD ["sh", "-c", "creditgate migrate && exec creditgate serve"]
