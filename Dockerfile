# syntax=docker/dockerfile:1
# The project's image: the API (`xbot api`) and the worker (`xbot worker`, the default) run from it.
#   docker build -t xbot-scheduler .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, in their own layer, so a source-only change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY . .
# Editable on purpose: xbot/storage/migrate.py finds migrations/ beside the package, so the tree stays in /app.
RUN pip install --no-deps -e . && xbot --help > /dev/null


FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XBOT_ENV=production \
    XBOT_DATA_DIR=/var/lib/xbot \
    API_HOST=0.0.0.0 \
    API_PORT=8000

RUN groupadd --system --gid 10001 xbot \
    && useradd --system --uid 10001 --gid xbot --home-dir /var/lib/xbot --create-home \
        --shell /usr/sbin/nologin xbot

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001

EXPOSE 8000
CMD ["xbot", "worker"]
