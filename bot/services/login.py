"""The bot's one device for life: its login kept in the database, restored at every start."""

from __future__ import annotations

import logging

from bot.matrix.gateway import MatrixGateway, SavedLogin
from bot.settings import BotSettings
from bot.store.db import Store

log = logging.getLogger(__name__)

LOGIN_USER = "matrix.user_id"
LOGIN_DEVICE = "matrix.device_id"
LOGIN_TOKEN = "matrix.access_token"  # noqa: S105 (a key name)


async def saved_login(store: Store, user_id: str) -> SavedLogin | None:
    """The login recorded for `user_id`, if there is one."""
    async with store.transaction() as tx:
        user = await tx.get_state(LOGIN_USER)
        device = await tx.get_state(LOGIN_DEVICE)
        token = await tx.get_secret(LOGIN_TOKEN)
    if user == user_id and device and token:
        return SavedLogin(user, device, token.decode())
    return None


async def connect(bot: BotSettings, store: Store, gateway: MatrixGateway) -> SavedLogin:
    """Restore the saved device, or log in once (and save it)."""
    saved = await saved_login(store, bot.user_id)
    login = await gateway.connect(
        saved=saved,
        password=bot.password.reveal(),
        access_token=bot.access_token.reveal() if bot.access_token else None,
    )
    if login != saved:
        async with store.transaction() as tx:
            await tx.set_state(LOGIN_USER, login.user_id)
            await tx.set_state(LOGIN_DEVICE, login.device_id)
            await tx.set_secret(LOGIN_TOKEN, login.access_token.encode())
    log.info("logged in as %s, device %s", login.user_id, login.device_id)
    return login
