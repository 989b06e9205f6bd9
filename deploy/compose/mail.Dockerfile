# La passerelle courriel : Postfix (MX du domaine de réponse, relais du bot) et rspamd,
# paquets Debian, configuration montée depuis le rendu de deploy.render.
FROM debian:bookworm-slim
RUN echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       postfix postfix-pcre rspamd ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY mail-start.sh /usr/local/bin/mail-start
CMD ["/usr/local/bin/mail-start"]
