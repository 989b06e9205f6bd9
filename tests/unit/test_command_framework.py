"""The command framework: strict parsing, generated help, confirmation flow, error references."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest

from bot.commands.framework import (
    Arg,
    CommandFailed,
    CommandSet,
    CommandSpec,
    Flag,
    NotACommand,
    Parsed,
    ParseFailure,
    PendingConfirmation,
    Reply,
    failure_reply,
    fold,
    render_table,
)


@dataclass
class Ctx:
    """What a handler may touch in these tests: a record of what it did."""

    done: list[str] = field(default_factory=list)


INVITER = CommandSpec(
    "inviter",
    (
        Arg("groupe", "text", "Le groupe à inviter."),
        Arg("motif", "rest", "Pourquoi.", optional=True),
    ),
    "Invite un groupe dans la demande.\nLe groupe reçoit l'historique à partir de maintenant.",
    section="Demandes",
)
TRAITEE = CommandSpec(
    "traitée",
    (
        Arg(
            "utilite", "choice", "Utilité pour l'usager.", choices=("utile", "nesaispas", "inutile")
        ),
    ),
    "Marque la demande comme traitée.",
    section="Demandes",
)
STATS = CommandSpec(
    "stats",
    (
        Arg("depuis", "date", "Date de début."),
        Arg("jours", "int", "Nombre de jours.", optional=True),
    ),
    "Statistiques.",
    flags=(Flag("--detail", "Une ligne par demande."),),
    aliases=("statistiques",),
)
AGENT = CommandSpec(
    "agent",
    (Arg("compte", "matrix_id", "Compte Matrix."), Arg("courriel", "email", "Adresse.")),
    "Associe une adresse à un compte.",
    section="Annuaire",
)
RETIRER = CommandSpec(
    "retirer",
    (Arg("membre", "matrix_id", "Le participant."), Arg("motif", "rest", "Pourquoi.")),
    "Retire un participant de la demande.",
    destructive=True,
    section="Demandes",
)
PANNE = CommandSpec("panne", (), "Toujours en échec.", section="Annuaire")


def build(on_error: Any = None) -> CommandSet[Ctx]:
    commands: CommandSet[Ctx] = CommandSet(on_error=on_error)

    @commands.command(INVITER)
    async def inviter(ctx: Ctx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
        ctx.done.append(f"inviter {args['groupe']}")
        return Reply(f"{args['groupe']} invité.")

    async def echo(ctx: Ctx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
        return Reply(repr((dict(args), sorted(flags))))

    for spec in (TRAITEE, STATS, AGENT):
        commands.add(spec, echo)

    @commands.destructive(RETIRER)
    async def retirer(
        ctx: Ctx, args: Mapping[str, Any], flags: frozenset[str], *, dry_run: bool
    ) -> Reply:
        if args["membre"] == "@absent:ex.fr":
            return Reply.error("Ce compte ne participe pas à la demande.")
        if not dry_run:
            ctx.done.append(f"retirer {args['membre']}")
        verb = "serait retiré" if dry_run else "a été retiré"
        return Reply(f"{args['membre']} {verb} ({args['motif']}).", html="<p>résumé</p>")

    @commands.command(PANNE)
    async def panne(ctx: Ctx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
        raise RuntimeError("secret internal detail: db password=hunter2")

    return commands


def parsed(commands: CommandSet[Ctx], text: str) -> Parsed:
    result = commands.parse(text)
    assert isinstance(result, Parsed), result
    return result


def failure(commands: CommandSet[Ctx], text: str) -> ParseFailure:
    result = commands.parse(text)
    assert isinstance(result, ParseFailure), result
    return result


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text", ["bonjour", "", "   ", "! inviter x", "!!! urgent", "!123", "merci !inviter x"]
)
def test_ordinary_messages_are_not_commands(text: str) -> None:
    assert isinstance(build().parse(text), NotACommand)


def test_plain_and_quoted_arguments() -> None:
    commands = build()
    result = parsed(commands, "  !inviter CAF-95  ")
    assert result.spec is INVITER
    assert dict(result.args) == {"groupe": "CAF-95", "motif": None}
    assert result.flags == frozenset()

    assert parsed(commands, '!inviter "CAF du Val-d\'Oise"').args["groupe"] == "CAF du Val-d'Oise"
    french = parsed(commands, "!inviter «\u00a0CAF du Val-d'Oise\u00a0» urgent")
    assert dict(french.args) == {"groupe": "CAF du Val-d'Oise", "motif": "urgent"}
    curly = parsed(commands, "!inviter “CAF 95”")
    assert curly.args["groupe"] == "CAF 95"


def test_apostrophes_are_not_quotes_and_rest_is_verbatim() -> None:
    result = parsed(build(), "!inviter CAF-95   l'usager   a dit \"bonjour\n à demain")
    assert result.args["motif"] == "l'usager   a dit \"bonjour\n à demain"


def test_unclosed_or_glued_quotes_are_refused() -> None:
    commands = build()
    assert failure(commands, '!inviter "CAF 95').message == 'Guillemet " non fermé.'
    assert failure(commands, "!inviter « CAF 95").message == "Guillemet « non fermé."
    glued = failure(commands, '!inviter "CAF"95')
    assert glued.message == 'Il manque une espace après le guillemet fermant ".'


def test_command_names_ignore_case_and_accents() -> None:
    commands = build()
    for text in ("!traitée utile", "!traitee utile", "!TRAITÉE utile", "!Traitee UTILE"):
        result = parsed(commands, text)
        assert result.spec is TRAITEE
        assert result.args["utilite"] == "utile"
    assert fold("Clôturée") == "cloturee"
    assert parsed(commands, "!Statistiques 01/02/2025").spec is STATS


def test_choices_are_strict() -> None:
    result = failure(build(), "!traitee peut-être")
    assert result.message == (
        "« peut-être » n'est pas une valeur possible pour utilite : utile, nesaispas, inutile."
    )
    assert result.usage == "!traitée <utilite>"


def test_missing_and_extra_arguments() -> None:
    commands = build()
    missing = failure(commands, "!agent")
    assert missing.message == "Arguments manquants : compte, courriel."
    assert missing.usage == "!agent <compte> <courriel>"
    extra = failure(commands, "!traitee utile encore")
    assert extra.message == "Trop d'arguments : « encore » n'était pas attendu."
    one_missing = failure(commands, "!retirer @a:ex.fr")
    assert one_missing.message == "Argument manquant : motif."

    reply = extra.reply()
    assert reply.is_error
    assert reply.text == (
        "Trop d'arguments : « encore » n'était pas attendu.\nUsage : !traitée <utilite>"
    )
    assert reply.html is not None and "<code>!traitée &lt;utilite&gt;</code>" in reply.html


def test_ints_and_dates() -> None:
    commands = build()
    result = parsed(commands, "!stats 05/03/2025 -7")
    assert dict(result.args) == {"depuis": date(2025, 3, 5), "jours": -7}
    assert parsed(commands, "!stats 2025-03-05").args == {"depuis": date(2025, 3, 5), "jours": None}
    for bad in ("12e3", "1_000", "sept", "٣"):
        message = failure(commands, f"!stats 2025-03-05 {bad}").message
        assert message == f"« {bad} » n'est pas un nombre entier (argument jours)."
    assert failure(commands, "!stats 31/02/2025").message == (
        "La date « 31/02/2025 » n'existe pas (argument depuis)."
    )
    assert failure(commands, "!stats 5 mars").message == (
        "« 5 » n'est pas une date (argument depuis) : écrivez JJ/MM/AAAA ou AAAA-MM-JJ."
    )


def test_matrix_ids_and_emails() -> None:
    commands = build()
    result = parsed(commands, "!agent @jean.dupont:aplus.example Jean.Dupont@CAF.FR")
    assert dict(result.args) == {
        "compte": "@jean.dupont:aplus.example",
        "courriel": "Jean.Dupont@caf.fr",
    }
    assert failure(commands, "!agent jean a@b.fr").message == (
        "« jean » n'est pas un identifiant Matrix (forme @nom:serveur) (argument compte)."
    )
    assert failure(commands, "!agent @j:ex.fr pas-une-adresse").message == (
        "« pas-une-adresse » n'est pas une adresse e-mail valide (argument courriel)."
    )


def test_flags_anywhere_with_dash_variants_and_unknown_flags_refused() -> None:
    commands = build()
    assert parsed(commands, "!stats --detail 2025-01-01").flags == {"detail"}
    assert parsed(commands, "!stats 2025-01-01 —detail").flags == {"detail"}
    assert parsed(commands, '!inviter "--detail"').args["groupe"] == "--detail"
    assert failure(commands, "!stats 2025-01-01 --tout").message == (
        "Option inconnue : --tout (options possibles : --detail)."
    )
    assert failure(commands, "!traitee utile --vite").message == (
        "Option inconnue : --vite (aucune option ici)."
    )


def test_dry_run_flag_before_or_after_free_text() -> None:
    commands = build()
    before = parsed(commands, "!retirer @a:ex.fr --dry-run doublon de compte")
    after = parsed(commands, "!retirer @a:ex.fr doublon de compte --dry-run")
    for result in (before, after):
        assert result.dry_run
        assert result.args["motif"] == "doublon de compte"


def test_unknown_command_suggests_the_closest_one() -> None:
    commands = build()
    assert failure(commands, "!invter CAF").message == (
        "Commande inconnue : !invter. Vouliez-vous dire !inviter ? Tapez !aide pour la liste."
    )
    result = failure(commands, "!xyzzy")
    assert result.message == "Commande inconnue : !xyzzy. Tapez !aide pour la liste."
    assert result.usage is None


# ----------------------------------------------------------------------------- declarations


def test_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="choices"):
        Arg("x", "choice", "aide")
    with pytest.raises(ValueError, match="must come last"):
        CommandSpec("x", (Arg("a", "rest", "."), Arg("b", "text", ".")), ".")
    with pytest.raises(ValueError, match="optional"):
        CommandSpec("x", (Arg("a", "text", ".", optional=True), Arg("b", "text", ".")), ".")
    with pytest.raises(ValueError, match="reserved"):
        CommandSpec("x", (), ".", flags=(Flag("--dry-run", "."),))
    commands = build()
    with pytest.raises(ValueError, match="declared twice"):
        commands.add(CommandSpec("Traitee", (), "."), _noop)
    with pytest.raises(TypeError, match="add_destructive"):
        commands.add(CommandSpec("purger", (), ".", destructive=True), _noop)
    assert RETIRER.usage == "!retirer <membre> <motif…> [--dry-run]"
    assert Flag("--detail", ".").name == "detail"


async def _noop(ctx: Ctx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    return Reply("ok")


# ----------------------------------------------------------------------------- help


def test_help_overview_is_generated_and_grouped() -> None:
    text = build().help_text()
    assert text == "\n".join(
        [
            "Commandes disponibles :",
            "",
            "Demandes :",
            "  !inviter <groupe> [motif…] — Invite un groupe dans la demande.",
            "  !traitée <utilite> — Marque la demande comme traitée.",
            "  !retirer <membre> <motif…> [--dry-run] — Retire un participant de la demande."
            " (demande confirmation)",
            "",
            "Général :",
            "  !stats <depuis> [jours] [--detail] — Statistiques.",
            "",
            "Annuaire :",
            "  !agent <compte> <courriel> — Associe une adresse à un compte.",
            "  !panne — Toujours en échec.",
            "",
            "Aide et confirmation :",
            "  !aide [commande] — Affiche la liste des commandes, ou le détail de l'une d'elles.",
            "  !confirmer [code] — Exécute la commande qui attend votre confirmation.",
            "  !annuler — Abandonne la commande qui attend votre confirmation.",
            "",
            "Tapez « !aide <commande> » pour le détail d'une commande.",
        ]
    )


def test_help_for_one_command() -> None:
    commands = build()
    text = commands.help_text("!Retirer")
    assert text.splitlines()[:4] == [
        "Commande !retirer",
        "Usage : !retirer <membre> <motif…> [--dry-run]",
        "",
        "Retire un participant de la demande.",
    ]
    assert "(demande confirmation)" in text
    assert "  <membre> — Le participant. (identifiant Matrix (@nom:serveur))" in text
    assert "  --dry-run — Montre ce qui serait fait, sans rien changer." in text

    stats = commands.help_text("statistiques")
    assert "  [jours] — Nombre de jours. (nombre entier, facultatif)" in stats
    assert "Autres noms : !statistiques" in stats
    assert "au choix : utile, nesaispas, inutile" in commands.help_text("traitee")
    assert commands.help_text("invitr").startswith("Commande inconnue : !invitr. Vouliez-vous")


async def test_help_command_replies_with_help() -> None:
    commands = build()
    overview = await commands.dispatch(parsed(commands, "!aide"), Ctx())
    assert overview == Reply(commands.help_text())
    detail = await commands.dispatch(parsed(commands, "!aide inviter"), Ctx())
    assert detail == Reply(commands.help_text("inviter"))
    unknown = await commands.dispatch(parsed(commands, "!aide nimporte"), Ctx())
    assert isinstance(unknown, Reply) and unknown.is_error


# ----------------------------------------------------------------------------- dispatch


async def test_dispatch_returns_the_handler_reply() -> None:
    commands = build()
    ctx = Ctx()
    reply = await commands.dispatch(parsed(commands, "!inviter CAF-95"), ctx)
    assert reply == Reply("CAF-95 invité.")
    assert ctx.done == ["inviter CAF-95"]
    echo = await commands.dispatch(parsed(commands, "!stats 2025-01-01 --detail"), ctx)
    assert isinstance(echo, Reply)
    assert echo.text == "({'depuis': datetime.date(2025, 1, 1), 'jours': None}, ['detail'])"


async def test_destructive_command_asks_for_confirmation_then_runs() -> None:
    commands = build()
    ctx = Ctx()
    first = await commands.dispatch(parsed(commands, "!retirer @a:ex.fr doublon"), ctx)
    assert isinstance(first, PendingConfirmation)
    assert ctx.done == []  # nothing happened yet
    assert re.fullmatch(r"[A-Z2-9]{4}", first.token)
    assert first.summary.text == (
        f"@a:ex.fr serait retiré (doublon).\n\n"
        f"Pour exécuter : !confirmer {first.token} — pour abandonner : !annuler"
    )
    assert first.summary.html == (
        f"<p>résumé</p><p><strong>Pour exécuter : !confirmer {first.token} — pour "
        "abandonner : !annuler</strong></p>"
    )

    confirm = parsed(commands, f"!confirmer {first.token.lower()}")
    assert confirm.settles_pending
    done = await commands.dispatch(confirm, ctx, pending=first)
    assert done == Reply("@a:ex.fr a été retiré (doublon).", html="<p>résumé</p>")
    assert ctx.done == ["retirer @a:ex.fr"]


async def test_confirmation_without_code_wrong_code_and_cancel() -> None:
    commands = build()
    ctx = Ctx()
    pending = await commands.dispatch(parsed(commands, "!retirer @a:ex.fr doublon"), ctx)
    assert isinstance(pending, PendingConfirmation)

    wrong = await commands.dispatch(parsed(commands, "!confirmer ZZZZZ"), ctx, pending=pending)
    assert isinstance(wrong, Reply) and wrong.is_error
    assert "incorrect" in wrong.text and ctx.done == []

    cancel = parsed(commands, "!annuler")
    assert cancel.settles_pending
    cancelled = await commands.dispatch(cancel, ctx, pending=pending)
    assert cancelled == Reply("Commande !retirer abandonnée : rien n'a été fait.")

    nothing = await commands.dispatch(parsed(commands, "!confirmer"), ctx)
    assert nothing == Reply.error("Aucune commande n'attend de confirmation.")

    # The code is required: without it nothing runs, and the confirmation still waits.
    without_code = await commands.dispatch(parsed(commands, "!confirmer"), ctx, pending=pending)
    assert isinstance(without_code, Reply) and without_code.is_error
    assert "code" in without_code.text and pending.token not in without_code.text
    assert ctx.done == []
    with_code = await commands.dispatch(
        parsed(commands, f"!confirmer {pending.token.lower()}"), ctx, pending=pending
    )
    assert isinstance(with_code, Reply) and not with_code.is_error
    assert ctx.done == ["retirer @a:ex.fr"]
    assert not parsed(commands, "!inviter x").settles_pending


async def test_dry_run_only_shows_the_summary() -> None:
    commands = build()
    ctx = Ctx()
    result = await commands.dispatch(parsed(commands, "!retirer --dry-run @a:ex.fr doublon"), ctx)
    assert result == Reply("@a:ex.fr serait retiré (doublon).", html="<p>résumé</p>")
    assert ctx.done == []


async def test_refused_destructive_command_needs_no_confirmation() -> None:
    commands = build()
    result = await commands.dispatch(parsed(commands, "!retirer @absent:ex.fr x"), Ctx())
    assert result == Reply.error("Ce compte ne participe pas à la demande.")


async def test_unexpected_error_is_raised_with_a_reference_that_is_logged() -> None:
    """Never swallowed: the caller rolls back the handler's work and decides (retry or
    answer), with the reference the log has."""
    logged: list[tuple[BaseException, str, str]] = []
    commands = build(on_error=lambda exc, ref, p: logged.append((exc, ref, p.spec.name)))
    with pytest.raises(CommandFailed) as failed:
        await commands.dispatch(parsed(commands, "!panne"), Ctx())

    (exc, reference, name) = logged[0]
    assert len(logged) == 1 and name == "panne" and isinstance(exc, RuntimeError)
    assert failed.value.reference == reference and failed.value.__cause__ is exc
    assert re.fullmatch(r"ERR-[A-Z2-9]{6}", reference)
    for rolled_back in (True, False):
        reply = failure_reply(reference, rolled_back=rolled_back)
        assert reply.is_error
        assert reply.text.startswith(
            f"Une erreur inattendue s'est produite (référence {reference})."
        )
        for leak in ("Traceback", "RuntimeError", "hunter2", "secret internal"):
            assert leak not in reply.text
    assert "n'a pas été exécutée" in failure_reply(reference, rolled_back=True).text
    assert "pas certain" in failure_reply(reference, rolled_back=False).text


async def test_default_error_callback_logs_the_reference(caplog: pytest.LogCaptureFixture) -> None:
    commands = build()
    with (
        caplog.at_level(logging.ERROR, logger="bot.commands.framework"),
        pytest.raises(CommandFailed) as failed,
    ):
        await commands.dispatch(parsed(commands, "!panne"), Ctx())
    (record,) = caplog.records
    assert failed.value.reference in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


async def test_handler_returning_a_non_reply_is_an_unexpected_error() -> None:
    logged: list[str] = []
    commands: CommandSet[Ctx] = CommandSet(on_error=lambda exc, ref, p: logged.append(ref))

    async def sloppy(ctx: Ctx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
        return "ok"  # type: ignore[return-value]

    commands.add(CommandSpec("bancale", (), "."), sloppy)
    with pytest.raises(CommandFailed) as failed:
        await commands.dispatch(parsed(commands, "!bancale"), Ctx())
    assert logged == [failed.value.reference]


async def test_the_declared_audience_is_checked_once_before_the_handler() -> None:
    ran: list[str] = []

    def gate(ctx: Ctx, spec: CommandSpec) -> str | None:
        return None if spec.audience != "chef" else f"!{spec.name} : réservé aux chefs."

    commands: CommandSet[Ctx] = CommandSet(gate=gate, confirmations=False)

    async def handler(ctx: Ctx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
        ran.append("ok")
        return Reply("fait")

    commands.add(CommandSpec("chef", (), ".", audience="chef"), handler)
    commands.add(CommandSpec("tous", (), "."), handler)
    assert await commands.dispatch(parsed(commands, "!chef"), Ctx()) == Reply.error(
        "!chef : réservé aux chefs."
    )
    assert ran == []
    assert await commands.dispatch(parsed(commands, "!tous"), Ctx()) == Reply("fait")
    # Without confirmations, the set has no !confirmer / !annuler of its own.
    assert commands.find("confirmer") is None and commands.find("annuler") is None


# ----------------------------------------------------------------------------- tables


def test_table_as_text_and_escaped_html() -> None:
    text, markup = render_table(
        ["Groupe", "Demandes"], [["CAF <95>", 3], ["DGFiP & co", None]], title="Bilan"
    )
    assert text == "\n".join(
        [
            "Bilan",
            "Groupe      Demandes",
            "----------  --------",
            "CAF <95>    3",
            "DGFiP & co  —",
        ]
    )
    assert markup == (
        "<p><strong>Bilan</strong></p><table><thead><tr><th>Groupe</th><th>Demandes</th></tr>"
        "</thead><tbody><tr><td>CAF &lt;95&gt;</td><td>3</td></tr>"
        "<tr><td>DGFiP &amp; co</td><td>—</td></tr></tbody></table>"
    )
    assert Reply.table(["A"], []) == Reply("Aucun résultat.", html="<p>Aucun résultat.</p>")
    with pytest.raises(ValueError, match="one cell per header"):
        render_table(["A", "B"], [["x"]])
