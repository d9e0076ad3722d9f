# cilium-startup-guard: the webhook (`serve`), the gate controller (`controller`) and `certs`, one image.
# Build: docker build -t cilium-startup-guard:0.1.0 .

# Stage 1: build the wheel and install it with its dependencies into a virtual environment.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
# Every dependency ships binary wheels for Linux, so this stage needs no compiler either.
RUN pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install /dist/*.whl

# Stage 2: the interpreter and the virtual environment, nothing that built them.
FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
# Numeric, so that Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
ENTRYPOINT ["cilium-startup-guard"]
CMD ["--help"]
