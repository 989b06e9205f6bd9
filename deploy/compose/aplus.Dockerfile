# Le bot Administration+ (construit depuis la racine du dépôt).
FROM python:3.11-slim
RUN useradd --system --home /var/lib/aplus aplus && mkdir -p /var/lib/aplus \
    && chown aplus:aplus /var/lib/aplus
WORKDIR /opt/aplus
COPY pyproject.toml README.md ./
COPY bot bot
COPY bridge bridge
COPY policies policies
RUN pip install --no-cache-dir .
USER aplus
