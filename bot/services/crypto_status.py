"""`aplus crypto status`: the bot's identity as the homeserver sees it."""

from __future__ import annotations

from bot.matrix.cross_signing import CrossSigningReport, cross_signing_status
from bot.matrix.gateway import MatrixGateway
from bot.services.login import saved_login
from bot.settings import Settings
from bot.store.crypto import FieldCipher
from bot.store.db import Store


def render(report: CrossSigningReport) -> str:
    def yes(flag: bool | None) -> str:
        return {True: "oui", False: "NON", None: "inconnu"}[flag]

    return "\n".join(
        [
            f"Compte du bot        : {report.user_id}",
            f"Appareil             : {report.device_id}",
            f"Clé maîtresse        : {report.master_key or 'absente'}",
            f"Clé d'auto-signature : {report.self_signing_key or 'absente'}",
            f"Clé de signature     : {report.user_signing_key or 'absente'}",
            f"Appareil signé       : {yes(report.device_signed)}",
            f"Clés conformes à celles conservées par le service : "
            f"{yes(report.matches_stored_keys)}",
        ]
    )


async def crypto_status(settings: Settings) -> str:
    store = await Store.open(
        settings.database.url.reveal(), FieldCipher.from_secret(settings.secrets.data_key.reveal())
    )
    try:
        saved = await saved_login(store, settings.bot.user_id)
        if saved is None:
            return "Le bot ne s'est encore jamais connecté : aucun appareil enregistré."
        gateway = MatrixGateway(
            homeserver=settings.homeserver.url,
            user_id=settings.bot.user_id,
            device_name=settings.bot.device_name,
            store_dir=settings.bot.store_dir,
            pickle_key=settings.secrets.pickle_key.reveal(),
        )
        try:
            await gateway.connect(saved=saved, password=None)
            async with store.transaction() as tx:
                report = await cross_signing_status(gateway.client, tx)
        finally:
            await gateway.close()
    finally:
        await store.close()
    return render(report)
