"""The guard as a Synapse module: a thin adapter from Synapse's callbacks to ``decision``.

Synapse calls these coroutines on its Twisted reactor, so the bot is asked with
Synapse's own HTTP client (``ModuleApi.http_client``), never with asyncio. Each
request gets its share of ``timeout_seconds`` (Synapse's client would wait 60 s), and
no callback ever raises: an exception would reach the client as a 500. In a demande
room, anything that goes wrong is a refusal (fail closed), with ``fr.aplus.reason``.

Configuration (``homeserver.yaml``)::

    modules:
      - module: synapse_module.aplus_guard.AplusGuard
        config:
          bot_user_id: "@aplus:exemple.fr"
          api_urls: ["http://127.0.0.1:9181", "http://10.0.0.12:9181"]
          shared_secret_path: /etc/matrix-synapse/aplus_guard_secret
          timeout_seconds: 2
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from synapse.module_api import NOT_SPAM, ModuleApi, make_deferred_yieldable, run_in_background
from synapse.module_api.errors import Codes, ConfigError
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.python.failure import Failure
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from synapse_module import decision
from synapse_module.config import GuardConfig, GuardConfigError, parse_guard_config

logger = logging.getLogger(__name__)

_STATE_FILTER = [(decision.CREATE_TYPE, ""), (decision.DEMANDE_STATE_TYPE, "")]


class AplusGuard:
    """Registered by Synapse from the ``modules:`` list; one instance per process."""

    def __init__(self, config: GuardConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        self._bot = config.bot_user_id
        self._urls = tuple(decision.check_url(u) for u in config.api_urls)
        self._auth = f"Bearer {config.shared_secret}".encode()
        api.register_spam_checker_callbacks(
            user_may_create_room=self.user_may_create_room,
            user_may_invite=self.user_may_invite,
            user_may_join_room=self.user_may_join_room,
            check_event_for_spam=self.check_event_for_spam,
        )
        logger.info(
            "aplus guard: demande rooms of %s checked against %s", self._bot, list(self._urls)
        )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> GuardConfig:
        try:
            return parse_guard_config(config)
        except GuardConfigError as exc:
            raise ConfigError(
                f"module Administration+ (aplus_guard) : {exc.message}", path=(exc.key,)
            ) from None

    # ------------------------------------------------------------ the callbacks
    async def user_may_create_room(self, user_id: str, room_config: dict[str, Any]) -> Any:
        try:
            step = decision.on_create_room(user_id, room_config, self._bot)
            return await self._settle(step, "createRoom", user_id, "-")
        except Exception:
            logger.exception("aplus guard: createRoom by %s refused (internal error)", user_id)
            return _refusal(decision.UNAVAILABLE)

    async def user_may_invite(self, inviter: str, invitee: str, room_id: str) -> Any:
        try:
            room = await self._room(room_id)
            step = decision.on_invite(inviter, invitee, room_id, room, self._bot)
            return await self._settle(step, "invite", invitee, room_id)
        except Exception:
            logger.exception("aplus guard: invite of %s refused (internal error)", invitee)
            return _refusal(decision.UNAVAILABLE)

    async def user_may_join_room(self, user_id: str, room_id: str, is_invited: bool) -> Any:
        try:
            room = await self._room(room_id)
            step = decision.on_join(user_id, room_id, is_invited, room, self._bot)
            return await self._settle(step, "join", user_id, room_id)
        except Exception:
            logger.exception("aplus guard: join of %s refused (internal error)", user_id)
            return _refusal(decision.UNAVAILABLE)

    async def check_event_for_spam(self, event: Any) -> Any:
        # Called for every event of the server: anything but power levels leaves at once.
        try:
            if event.type != decision.POWER_LEVELS_TYPE or not event.is_state():
                return NOT_SPAM
            room = await self._room(event.room_id)
            step = decision.on_power_levels(event.content, room, self._bot)
            return await self._settle(step, "power levels", event.sender, event.room_id)
        except Exception:
            logger.exception("aplus guard: power levels event refused (internal error)")
            return _refusal(decision.UNAVAILABLE)

    # ------------------------------------------------------------------ helpers
    async def _room(self, room_id: str) -> decision.RoomFacts:
        state = await self._api.get_room_state(room_id, _STATE_FILTER)
        create = state.get((decision.CREATE_TYPE, ""))
        demande = state.get((decision.DEMANDE_STATE_TYPE, ""))
        return decision.RoomFacts.of(
            create.sender if create is not None else None,
            demande.content if demande is not None else None,
        )

    async def _settle(self, step: decision.Step, what: str, user: str, room_id: str) -> Any:
        if isinstance(step, decision.Ask):
            verdict: decision.Allow | decision.Refuse = await self._ask(step.question)
        else:
            verdict = step
        if isinstance(verdict, decision.Allow):
            return NOT_SPAM
        logger.info("aplus guard: %s of %s in %s refused (%s)", what, user, room_id, verdict.reason)
        return _refusal(verdict.reason)

    async def _ask(self, question: dict[str, Any]) -> decision.Allow | decision.Refuse:
        payload = json.dumps(question).encode()
        for url in self._urls:
            try:
                status, body = await self._post(url, payload)
            except Exception as exc:
                logger.warning("aplus guard: %s did not answer (%s)", url, type(exc).__name__)
                continue
            verdict = decision.read_answer(status, body)
            if verdict is not None:
                return verdict
            logger.warning("aplus guard: %s gave no usable answer (HTTP %s)", url, status)
        return decision.Refuse(decision.UNAVAILABLE)

    async def _post(self, url: str, payload: bytes) -> tuple[int, object]:
        exchange = run_in_background(self._exchange, url, payload)
        result = await make_deferred_yieldable(_within(exchange, self._config.budget_per_url))
        return cast(tuple[int, object], result)

    async def _exchange(self, url: str, payload: bytes) -> tuple[int, object]:
        headers = Headers(
            {
                b"Authorization": [self._auth],
                b"Content-Type": [b"application/json"],
                b"Accept": [b"application/json"],
            }
        )
        response = await self._api.http_client.request("POST", url, data=payload, headers=headers)
        raw = await make_deferred_yieldable(readBody(response))
        try:
            body: object = json.loads(raw)
        except ValueError:
            body = None
        return int(response.code), body


def _refusal(reason: str) -> tuple[Codes, dict[str, str]]:
    code = Codes.UNKNOWN if reason == decision.UNAVAILABLE else Codes.FORBIDDEN
    return code, {decision.REASON_FIELD: reason}


def _within(d: defer.Deferred[Any], seconds: float) -> defer.Deferred[Any]:
    """A new Deferred with `d`'s result, or a TimeoutError after `seconds` (then `d` is
    cancelled). Unlike `Deferred.addTimeout`, it fires on time even if cancelling `d`
    does not make it fail at once."""
    out: defer.Deferred[Any] = defer.Deferred()

    def expire() -> None:
        if not out.called:
            out.errback(defer.TimeoutError(f"no answer within {seconds:.2f} s"))
        d.cancel()

    # Synapse runs on the global reactor; interfaces do not type-check as attributes.
    call: Any = cast(Any, _reactor).callLater(seconds, expire)

    def hand_over(result: Any) -> None:
        if call.active():
            call.cancel()
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)
        # The result went to `out` (or the caller left): nothing unhandled stays in `d`.

    d.addBoth(hand_over)
    return out
