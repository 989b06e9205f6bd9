"""Commands of a demande room: declarations and one small handler each.

A leaf: it imports the command framework, the domain and the ports, nothing else.
Each handler gets a `RoomCtx` (the caller's transaction seen through `DemandeTx`, the
demande, who wrote, and the few capabilities a command may use) and returns a `Reply`.
Who may run each command is declared on it (`audience`) and checked once, by the
framework, through `gate` below. The caller runs the handler in a savepoint: what a
failing handler did is rolled back.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.commands.framework import Arg, CommandSet, CommandSpec, Reply
from bot.domain import amend, closing, matching
from bot.domain import dossier as texts
from bot.domain import status as status_rules
from bot.domain.calendar import PARIS
from bot.domain.mail_volume import digest_hour
from bot.domain.model import Agent, Demande, Group, Role, Status
from bot.domain.policies import MembershipRules, Policies
from bot.domain.routing import may_invite_agent, may_invite_group
from bot.ports import Author, EmailHooks, MailTx, StatusChanger

SECTION_DEMANDE = "La demande"
SECTION_ANSWERS = "Réponses rapides (instructeurs)"
SECTION_CLOSE = "Clôture (aidant)"
SECTION_DOSSIER = "Dossier (aidant)"

# Who may run a command (checked by `gate`).
INSTRUCTEUR = "instructeur"
AIDANT_SIDE = "aidant_side"


@dataclass(frozen=True)
class RoomCtx:
    tx: MailTx
    demande: Demande
    author: Author
    participant_kind: str
    aidant: Agent
    status: StatusChanger
    email: EmailHooks
    rules: MembershipRules
    policies: Policies
    now: datetime
    key: str  # the event ID (or the email's key): txn IDs derive from it
    invite: Callable[[Sequence[str]], Awaitable[None]]  # Matrix IDs already in the ledger
    # Asks for the instructeurs' companion room: its ID when it exists, None when asked now.
    companion: Callable[[], Awaitable[str | None]] | None = None

    @property
    def agent(self) -> Agent:
        return self.author.agent

    @property
    def is_instructeur(self) -> bool:
        return self.participant_kind in ("instructeur", "invite") and self.agent.has(
            Role.INSTRUCTEUR
        )

    @property
    def is_aidant_side(self) -> bool:
        """The aidant, or a member of the aidant's group: they may close and reopen."""
        if self.agent.id == self.aidant.id:
            return True
        return (
            self.agent.group_id is not None
            and self.agent.group_id == self.aidant.group_id
            and self.agent.has(Role.AIDANT)
        )

    async def audit(self, action: str, **details: Any) -> None:
        await self.tx.audit(
            action,
            actor=self.author.address,
            reference=self.demande.reference,
            details={**details, "via": self.author.via},
            now=self.now,
        )


def gate(ctx: RoomCtx, spec: CommandSpec) -> str | None:
    if spec.audience == INSTRUCTEUR and not ctx.is_instructeur:
        return f"Seuls les instructeurs invités dans la demande peuvent utiliser !{spec.name}."
    if spec.audience == AIDANT_SIDE and not ctx.is_aidant_side:
        return (
            "Seul l'aidant qui a ouvert la demande, ou un membre de son groupe, peut "
            f"utiliser !{spec.name}."
        )
    return None


_OPEN_ONLY = frozenset(
    {"jemenoccupe", "pasleboninterlocuteur", "clore", "completer", "entreinstructeurs"}
)


def applies(ctx: RoomCtx, spec: CommandSpec) -> bool:
    """What `!aide` lists in this room, now: no `!rouvrir` on an open demande, no
    `!clore` on a closed one, `!notifications` only where emails are sent."""
    status = ctx.demande.status
    if spec.name in _OPEN_ONLY:
        return status is not Status.CLOTUREE
    if spec.name == "traitee":
        return status not in (Status.TRAITEE, Status.CLOTUREE)
    if spec.name == "rouvrir":
        return status in (Status.TRAITEE, Status.CLOTUREE)
    if spec.name == "notifications":
        return ctx.email.enabled and ctx.agent.email is not None
    if spec.name == "courriels":
        return ctx.email.enabled and ctx.agent.email_only
    return True


ROOM: CommandSet[RoomCtx] = CommandSet(gate=gate, confirmations=False, applies=applies)

Args = Mapping[str, Any]
Flags = frozenset[str]


async def _status_reply(
    ctx: RoomCtx,
    event: status_rules.Event,
    done: str,
    *,
    moved: str | Callable[[status_rules.Transition], str] | None = None,
    ask: Sequence[str] = (),
    **kw: Any,
) -> Reply:
    """Apply a status event; one reply says who did what and what the status became,
    each thing once: `moved` when the status changed, `done` otherwise.

    `ask`: who must act on the new status (Element notifies them)."""
    result = await ctx.status.apply(
        ctx.tx, ctx.demande, event, actor=ctx.author.address, txn=ctx.key, announce=False, **kw
    )
    if isinstance(result, status_rules.Refusal):
        return Reply.error(result.reason)
    text = done
    if result.notice:
        text = moved(result) if callable(moved) else moved or f"{done} {result.notice}"
    return Reply(text, mentions=tuple(ask) if result.changed else ())


@ROOM.command(
    CommandSpec("statut", (), "Afficher le statut de la demande.", section=SECTION_DEMANDE)
)
async def _statut(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    d = await ctx.tx.get_demande(ctx.demande.id)
    assert d is not None
    times = d.times
    lines = [f"Demande {d.reference} : {d.status.label}", f"Ouverte le {_fmt(times.created_at)}"]
    if times.first_answer_at:
        lines.append(f"Première réponse le {_fmt(times.first_answer_at)}")
    if times.treated_at:
        lines.append(f"Traitée le {_fmt(times.treated_at)}")
    if times.closed_at and d.status == Status.CLOTUREE:
        lines.append(f"Clôturée le {_fmt(times.closed_at)}")
    names = []
    for p in await ctx.tx.participants(d.id):
        agent = await ctx.tx.get_agent(p.agent_id)
        if agent is not None:
            names.append(agent.display_name + (" (par courriel)" if agent.email_only else ""))
    lines.append("Participants : " + ", ".join(names))
    return Reply("\n".join(lines))


@ROOM.command(
    CommandSpec(
        "inviter",
        (Arg("cible", "rest", "un groupe (« CPAM 95 », son nom), ou un collègue (nom, courriel)"),),
        "Inviter un groupe (tous ses instructeurs) ou un collègue dans la demande.\n"
        "Un groupe par son nom, ou par organisme et département (« !inviter CPAM 95 ») ; "
        "un collègue par son nom (« !inviter Marc Petit »), son adresse électronique ou son "
        "identifiant (@nom:serveur).",
        section=SECTION_DEMANDE,
    )
)
async def _inviter(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    target = " ".join(str(args["cible"]).split()).strip('«»"“” ')
    tx = ctx.tx
    participants = await tx.participants(ctx.demande.id)
    agent: Agent | None = None
    if target.startswith("@"):
        agent = await tx.get_agent_by_matrix_id(target)
        if agent is None:
            return Reply.error(
                f"{target} n'est pas dans l'annuaire du service : invitation refusée."
            )
    elif matching.looks_like_email(target):
        agent = await tx.get_agent_by_email(target.casefold())
        if agent is None:
            return Reply.error(
                f"Aucun agent de l'annuaire n'a l'adresse {target} : invitation refusée."
            )
    found: Group | None = None
    if agent is None:
        groups = await tx.list_groups()
        match = matching.find_group(
            target,
            groups,
            territoire=ctx.demande.territoire,
            organisation_of=_organisation_of(ctx),
            departement_of=_departement_of(ctx),
        )
        if isinstance(match, matching.Found) and len(match.groups) == 1:
            found = match.groups[0]
        elif isinstance(match, matching.Found):
            names = ", ".join(f"« {g.name} »" for g in match.groups)
            return Reply.error(
                f"Plusieurs groupes correspondent à « {target} » : {names}. "
                "Précisez lequel, par exemple : !inviter " + f"« {match.groups[0].name} »."
            )
        else:
            colleagues = matching.find_colleague(target, await tx.list_agents()).agents
            if len(colleagues) == 1:
                agent = colleagues[0]
            elif colleagues:
                who = ", ".join(f"{a.display_name} ({a.email or a.matrix_id})" for a in colleagues)
                return Reply.error(
                    f"Plusieurs agents s'appellent « {target} » : {who}. Invitez-le par son "
                    "adresse électronique."
                )
            else:
                return Reply.error(_unknown_target(ctx, target, match.suggestions))
    if agent is not None:
        group = await tx.get_group(agent.group_id) if agent.group_id else None
        decision = may_invite_agent(
            ctx.demande.territoire, agent, group, participants, ctx.rules, ctx.policies
        )
    else:
        assert found is not None
        decision = may_invite_group(
            ctx.demande.territoire,
            found,
            await tx.agents_of_group(found.id),
            participants,
            ctx.rules,
            ctx.policies,
        )
    if not decision.allowed:
        await ctx.audit("invitation_refused", target=target)
        return Reply.error(f"Invitation refusée : {decision.reason}.")
    added = []
    invited: list[str] = []
    for agent in decision.agents:
        await tx.add_participant(
            demande_id=ctx.demande.id,
            agent=agent,
            kind="invite",
            added_by=ctx.author.address,
            now=ctx.now,
        )
        await ctx.audit("participant_added", agent=agent.id)
        added.append(agent.display_name + (" (par courriel)" if agent.email_only else ""))
        if agent.matrix_id:
            invited.append(agent.matrix_id)
    await ctx.invite(invited)
    # Email-only agents and the groups' shared mailboxes get the dossier by email.
    await ctx.email.participants_added(tx, ctx.demande, decision.agents, key=ctx.key)
    text = "Invité(s) : " + ", ".join(added) + "."
    if decision.skipped:
        text += (
            " Non invité(s) : "
            + "; ".join(f"{a.display_name} ({why})" for a, why in decision.skipped)
            + "."
        )
    # The invited are asked to look at the demande: Element notifies them once they join.
    return Reply(text, mentions=tuple(invited))


@ROOM.command(
    CommandSpec(
        "completer",
        (Arg("correction", "rest", "« champ : valeur », par exemple « NIR : 2 61 03 … »"),),
        "Compléter ou corriger un champ du dossier (aidant) : le dossier mis à jour est "
        "montré à tous les participants, avec ce qui change.\n"
        "Exemples : !completer date de naissance : 13/03/1961 — !completer NIR : …",
        section=SECTION_DOSSIER,
        audience=AIDANT_SIDE,
    )
)
async def _completer(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    if ctx.demande.status is Status.CLOTUREE:
        return Reply.error("La demande est clôturée : rouvrez-la avec !rouvrir pour la compléter.")
    form = await ctx.tx.load_form(ctx.demande.id)
    result = amend.amend(
        form,
        str(args["correction"]),
        today=ctx.now.astimezone(PARIS).date(),
        known_departements=ctx.policies.departements.keys(),
        organisation_lookup=_organisation_of(ctx),
        categories=ctx.policies.categories.keys(),
    )
    if isinstance(result, amend.Refused):
        return Reply.error(
            "Le dossier n'est pas modifié :\n" + "\n".join(f"- {m}" for m in result.messages)
        )
    change = result.change
    if change.before == change.after:
        return Reply(f"Le champ « {change.field} » vaut déjà « {change.after} » : rien ne change.")
    await ctx.tx.update_form(ctx.demande.id, result.form)
    # The audit names the field, never its value (the usager's data stays encrypted).
    await ctx.audit("dossier_amended", field=change.field)
    before = change.before or "(vide)"
    text = (
        f"Dossier mis à jour par {ctx.agent.display_name} ({ctx.demande.reference}) : "
        f"{change.field} : {before} → {change.after}"
    )
    markup = (
        f"<p><strong>Dossier mis à jour</strong> par {html.escape(ctx.agent.display_name)} "
        f"({html.escape(ctx.demande.reference)})</p><ul><li>{html.escape(change.field)} : "
        f"<del>{html.escape(before)}</del> → <strong>{html.escape(change.after)}</strong></li></ul>"
    )
    # Email-only participants get it too (the bridge mails what the room reads).
    await ctx.email.room_message(
        ctx.tx,
        ctx.demande,
        event_key=f"amended-{ctx.key}",
        author=ctx.agent,
        author_id=ctx.author.address,
        content={"msgtype": "m.text", "body": text},
    )
    return Reply(text, markup)


@ROOM.command(
    CommandSpec(
        "jemenoccupe",
        (),
        "Indiquer que vous prenez la demande en charge.",
        aliases=("moi",),
        section=SECTION_ANSWERS,
        audience=INSTRUCTEUR,
    )
)
async def _jemenoccupe(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    name = ctx.agent.display_name
    return await _status_reply(
        ctx,
        status_rules.InstructeurAnswer(),
        f"{name} s'occupe de la demande.",
        moved=f"{name} s'occupe de la demande : elle passe au statut « en cours ».",
    )


@ROOM.command(
    CommandSpec(
        "pasleboninterlocuteur",
        (),
        "Indiquer que vous n'êtes pas le bon interlocuteur (pensez à !inviter le bon groupe).",
        aliases=("pasmoi",),
        section=SECTION_ANSWERS,
        audience=INSTRUCTEUR,
    )
)
async def _pasleboninterlocuteur(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    await ctx.audit("not_the_right_contact")
    return Reply(
        f"{ctx.agent.display_name} indique ne pas être le bon interlocuteur pour cette demande. "
        "Un participant peut inviter le groupe compétent avec !inviter <groupe>.",
        mentions=_aidant(ctx),
    )


@ROOM.command(
    CommandSpec(
        "traitee",
        (),
        "Indiquer que la demande est traitée.",
        aliases=("fait",),
        section=SECTION_ANSWERS,
        audience=INSTRUCTEUR,
    )
)
async def _traitee(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    # The aidant is asked whether the answer settles it (and may close the demande).
    return await _status_reply(
        ctx,
        status_rules.Treated(),
        f"{ctx.agent.display_name} a traité la demande.",
        moved=f"{ctx.agent.display_name} a traité la demande. {texts.CLOSE_HINT}",
        ask=_aidant(ctx),
    )


@ROOM.command(
    CommandSpec(
        "clore",
        (Arg("reponse", "rest", f"{closing.QUESTION} {closing.CHOICES}"),),
        "Clore la demande, en disant si la réponse est utile pour l'usager : "
        "!clore oui, !clore non ou !clore je ne sais pas.",
        section=SECTION_CLOSE,
        audience=AIDANT_SIDE,
    )
)
async def _clore(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    answer = str(args["reponse"])
    usefulness = closing.usefulness_of(answer)
    if usefulness is None:
        return Reply.error(
            f"« {answer} » : répondez oui, non ou je ne sais pas ({closing.QUESTION.lower()}), "
            "par exemple !clore oui."
        )
    word = closing.WORDS[usefulness]
    return await _status_reply(
        ctx,
        status_rules.Closed(usefulness),
        f"{ctx.agent.display_name} a clôturé la demande.",
        moved=f"{ctx.agent.display_name} a clôturé la demande. Réponse utile pour l'usager : "
        f"{word}.",
        usefulness=usefulness,
    )


@ROOM.command(
    CommandSpec(
        "rouvrir",
        (),
        "Rouvrir une demande clôturée.",
        section=SECTION_CLOSE,
        audience=AIDANT_SIDE,
    )
)
async def _rouvrir(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    name = ctx.agent.display_name
    return await _status_reply(
        ctx,
        status_rules.Reopened(),
        f"{name} rouvre la demande.",
        moved=lambda t: f"{name} a rouvert la demande (statut « {t.status.label} »).",
    )


@ROOM.command(
    CommandSpec(
        "entreinstructeurs",
        (),
        "Ouvrir (ou retrouver) le salon des instructeurs de la demande, sans l'aidant.\n"
        "Créé à la première demande ; les instructeurs de la demande y sont invités, les "
        "mêmes règles s'y appliquent et il est effacé avec la demande.",
        aliases=("entrenous",),
        section=SECTION_ANSWERS,
        audience=INSTRUCTEUR,
    )
)
async def _entreinstructeurs(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    if ctx.companion is None:
        return Reply.error("Le salon des instructeurs n'est pas disponible sur ce service.")
    room = await ctx.companion()
    await ctx.audit("companion_requested")
    if room is None:
        return Reply(
            f"{ctx.agent.display_name} ouvre un salon réservé aux instructeurs de la demande "
            f"{ctx.demande.reference} : les instructeurs y sont invités ; l'aidant ne le voit pas."
        )
    return Reply(
        f"Le salon des instructeurs de la demande existe déjà : https://matrix.to/#/{room}"
    )


@ROOM.command(
    CommandSpec(
        "procedurestandard",
        (Arg("choix", "choice", "oui (par défaut) ou non", choices=("oui", "non"), optional=True),),
        "Indiquer que la demande aurait pu passer par la procédure habituelle de l'organisme "
        "(« procédure standard ») : elle est comptée comme telle dans les statistiques.\n"
        "!procedurestandard non retire l'indication.",
        aliases=("standard",),
        section=SECTION_ANSWERS,
        audience=INSTRUCTEUR,
    )
)
async def _procedurestandard(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    flagged = str(args["choix"] or "oui").lower() == "oui"
    changed = await ctx.tx.set_procedure_standard(
        ctx.demande.id, flagged, by=ctx.author.address, now=ctx.now
    )
    name = ctx.agent.display_name
    if not changed:
        already = "est déjà" if flagged else "n'est pas"
        return Reply(f"La demande {already} marquée « procédure standard ».")
    await ctx.audit("procedure_standard" if flagged else "procedure_standard_removed")
    if flagged:
        return Reply(
            f"{name} indique que la demande aurait pu passer par la procédure habituelle "
            "de l'organisme (« procédure standard »)."
        )
    return Reply(f"{name} retire l'indication « procédure standard ».")


@ROOM.command(
    CommandSpec(
        "notifications",
        (Arg("choix", "choice", "oui ou non", choices=("oui", "non")),),
        "Recevoir ou non un avis par courriel à chaque nouveau message (sans son contenu) ; "
        "par courriel : recevoir ou non les courriels de cette demande.",
        section=SECTION_DEMANDE,
    )
)
async def _notifications(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    if not ctx.email.enabled:
        return Reply.error("Ce service n'envoie pas de courriels.")
    if not ctx.agent.email:
        return Reply.error(
            "L'annuaire ne connaît pas votre adresse électronique : demandez à un "
            "administrateur de l'ajouter."
        )
    on = str(args["choix"]).lower() == "oui"
    if ctx.agent.email_only:
        # They read the demande by email: this stops or resumes its emails to them.
        await ctx.tx.set_demande_muted(ctx.demande.id, ctx.agent.id, not on, ctx.now)
        if on:
            return Reply(
                f"{ctx.agent.display_name} recevra de nouveau les courriels de la demande "
                f"{ctx.demande.reference}."
            )
        return Reply(
            f"{ctx.agent.display_name} ne recevra plus les courriels de la demande "
            f"{ctx.demande.reference}, sauf ceux qui lui sont adressés (réponses à ses "
            "commandes, rappels). Pour les recevoir de nouveau : !notifications oui."
        )
    await ctx.tx.set_email_notifications(ctx.agent.id, on, ctx.now)
    if on:
        return Reply(
            f"{ctx.agent.display_name} recevra un avis par courriel à {ctx.agent.email} "
            "à chaque nouvelle demande, invitation ou nouveau message de ses demandes "
            "(sans leur contenu)."
        )
    return Reply(f"{ctx.agent.display_name} ne recevra plus d'avis par courriel.")


def _unknown_target(ctx: RoomCtx, target: str, suggestions: Sequence[Group]) -> str:
    text = f"« {target} » : groupe ou agent inconnu."
    dep = ctx.policies.departement(ctx.demande.territoire)
    where = f"du {dep.code} ({dep.name})" if dep else f"du {ctx.demande.territoire}"
    if suggestions:
        names = ", ".join(f"« {g.name} »" for g in suggestions)
        return f"{text} Groupes proches {where} : {names}."
    return f"{text} Aucun groupe {where} dans l'annuaire."


def _organisation_of(ctx: RoomCtx) -> Callable[[str], str | None]:
    def lookup(text: str) -> str | None:
        found = ctx.policies.find_organisation(text)
        return found.id if found else None

    return lookup


def _departement_of(ctx: RoomCtx) -> Callable[[str], str | None]:
    def lookup(text: str) -> str | None:
        found = ctx.policies.find_departement(text)
        return found.code if found else None

    return lookup


@ROOM.command(
    CommandSpec(
        "courriels",
        (
            Arg("rythme", "choice", "immediat ou quotidien", choices=("immediat", "quotidien")),
            Arg("heure", "rest", "l'heure du résumé quotidien (par exemple 17)", optional=True),
        ),
        "Recevoir les courriels des demandes à chaque message (immediat) ou en un résumé "
        "par jour et par demande (quotidien, à l'heure dite) ; le dossier, les invitations "
        "et les rappels arrivent toujours tout de suite.",
        section=SECTION_DEMANDE,
    )
)
async def _courriels(ctx: RoomCtx, args: Args, flags: Flags) -> Reply:
    if not ctx.email.enabled:
        return Reply.error("Ce service n'envoie pas de courriels.")
    if not ctx.agent.email_only:
        return Reply.error(
            "!courriels règle les courriels des agents qui travaillent par courriel ; sur "
            "Matrix, utilisez !notifications oui ou non."
        )
    if str(args["rythme"]).lower() == "immediat":
        await ctx.tx.set_email_digest(ctx.agent.id, None, ctx.now)
        return Reply(f"{ctx.agent.display_name} recevra chaque message par courriel, aussitôt.")
    hour = digest_hour(str(args.get("heure") or ""))
    if hour is None:
        return Reply.error("Heure non comprise : écrivez par exemple !courriels quotidien 17.")
    await ctx.tx.set_email_digest(ctx.agent.id, hour, ctx.now)
    return Reply(
        f"{ctx.agent.display_name} recevra chaque jour à {hour} h un résumé par demande "
        "(le dossier, les invitations et les rappels arrivent toujours tout de suite)."
    )


def _aidant(ctx: RoomCtx) -> tuple[str, ...]:
    return (ctx.aidant.matrix_id,) if ctx.aidant.matrix_id else ()


def _fmt(when: datetime) -> str:
    return when.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")
