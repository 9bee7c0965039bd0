# Aeyon Orchestrator: a two-stage build (a wheel, then a slim runtime image running as a non-root user).
# The actor system's own ports are bound to 127.0.0.1 inside the container and are never published; only the
# HTTP shim's port is.

FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.rst ./
COPY actors ./actors
COPY system ./system
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/aeyon_orchestrator-*.whl

FROM python:3.11-slim
RUN groupadd --system --gid 10001 aeyon \
    && useradd --system --uid 10001 --gid aeyon --home-dir /home/aeyon --create-home aeyon
COPY --from=build /wheels /wheels
# Only the wheels built above, so the versions are the ones resolved there (setup.cfg's ranges).
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && rm -rf /wheels
USER 10001:10001
WORKDIR /home/aeyon
# The contract's settings, with the container's defaults: listen on every interface of the container (the
# single-node actor ports stay on loopback whatever AEYON_HOST says), logs as JSON lines.
ENV AEYON_HOST=0.0.0.0 \
    AEYON_PORT=8000 \
    AEYON_ADMIN_PORT=1900 \
    AEYON_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/health' % os.environ.get('AEYON_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]
# SIGTERM drains (README.rst, Graceful drain); give the container at least AEYON_DRAIN_GRACE + AEYON_DRAIN_TIMEOUT
# + 15 s to stop (docker stop -t 60).
STOPSIGNAL SIGTERM
ENTRYPOINT ["aeyon"]
CMD ["serve"]
