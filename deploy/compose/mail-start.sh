#!/bin/sh
# rspamd en arrière-plan, puis Postfix au premier plan (journal sur la sortie standard).
set -e
mkdir -p /run/rspamd && chown _rspamd:_rspamd /run/rspamd
rspamd -u _rspamd -g _rspamd
exec postfix start-fg
