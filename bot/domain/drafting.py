"""French texts of the demande in preparation: what is still missing, the draft as it
stands (`!brouillon`), the guided path's questions, `!organismes`.

Pure, like `bot.domain.dossier`: plain `body` and escaped HTML side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from bot.domain import form as f
from bot.domain.dossier import RenderedMessage
from bot.domain.form import Problem


def _e(value: str) -> str:
    return escape(value, quote=True)


def _message(
    paragraphs: Sequence[str], bullets: Sequence[str] = (), tail: Sequence[str] = ()
) -> RenderedMessage:
    text = list(paragraphs)
    html = [f"<p>{_e(p)}</p>" for p in paragraphs]
    if bullets:
        text += [f"- {b}" for b in bullets]
        html.append("<ul>" + "".join(f"<li>{_e(b)}</li>" for b in bullets) + "</ul>")
    text += list(tail)
    html += [f"<p>{_e(p)}</p>" for p in tail]
    return RenderedMessage("\n".join(text), "".join(html))


HOW_TO_CORRECT = (
    "Envoyez seulement les lignes à compléter ou corriger, par exemple "
    "« date de naissance : 12/03/1961 ». !brouillon montre la demande en préparation, "
    "!guider vous pose les questions une à une, !annuler l'abandonne."
)


def still_missing(problems: Sequence[Problem], noted: Sequence[str] = ()) -> RenderedMessage:
    """The answer to a form or a correction that does not complete the demande yet."""
    head: list[str] = []
    if noted:
        head.append("C'est noté : " + ", ".join(noted) + ".")
    count = len(problems)
    head.append(
        "Il reste un point à compléter ou corriger :"
        if count == 1
        else f"Il reste {count} points à compléter ou corriger :"
    )
    return _message(head, [p.message for p in problems], [HOW_TO_CORRECT])


def not_complete(problems: Sequence[Problem]) -> RenderedMessage:
    """`!confirmer` on a demande that is not complete yet."""
    return _message(
        [
            "Il n'y a rien à confirmer pour l'instant : "
            "la demande en préparation n'est pas complète."
        ],
        [p.message for p in problems],
        [HOW_TO_CORRECT],
    )


def draft_view(
    draft: f.DraftFields, problems: Sequence[Problem], files: Sequence[str]
) -> RenderedMessage:
    """`!brouillon`: the draft as form lines (to copy, correct and send back)."""
    shown = f.render_draft(draft)
    intro = "Votre demande en préparation (vous pouvez la copier, la corriger et la renvoyer) :"
    text = [intro, "", shown]
    html = [f"<p>{_e(intro)}</p><pre><code>{_e(shown)}</code></pre>"]
    if files:
        text += ["", "Fichiers joints :"] + [f"- {name}" for name in files]
        html.append(
            "<p>Fichiers joints :</p><ul>" + "".join(f"<li>{_e(n)}</li>" for n in files) + "</ul>"
        )
    if problems:
        lines = [p.message for p in problems]
        text += ["", "Encore à compléter ou corriger :"] + [f"- {m}" for m in lines]
        html.append(
            "<p>Encore à compléter ou corriger :</p><ul>"
            + "".join(f"<li>{_e(m)}</li>" for m in lines)
            + "</ul>"
        )
    else:
        done = "Tout est complet : envoyez !confirmer pour ouvrir la demande."
        text += ["", done]
        html.append(f"<p>{_e(done)}</p>")
    return RenderedMessage("\n".join(text), "".join(html))


NO_DRAFT = (
    "Vous n'avez aucune demande en préparation. Envoyez !demande pour recevoir le "
    "formulaire, ou !guider pour que je vous pose les questions une à une."
)


def organisations_available(
    code: str, name: str, organisations: Sequence[str], categories: Sequence[str]
) -> RenderedMessage:
    """`!organismes <département>`."""
    if not organisations:
        return _message(
            [
                f"Aucun organisme n'a encore de groupe avec des instructeurs dans le {code} "
                f"({name}) : une demande de ce département ne peut être envoyée à personne. "
                "Prévenez l'équipe d'Administration+ de votre territoire."
            ]
        )
    tail = [f"Par catégorie : {'; '.join(categories)}."] if categories else []
    return _message(
        [f"Organismes disponibles dans le {code} ({name}) :"], list(organisations), tail
    )


def unknown_departement(text: str) -> str:
    return (
        f"Je ne connais pas le département « {text} » : indiquez son numéro ou son nom "
        "(par exemple !organismes 95 ou !organismes Val-d'Oise)."
    )


# --- the guided path ------------------------------------------------------------------

QUESTIONS: dict[str, str] = {
    f.TERRITOIRE: "Dans quel département vit l'usager ? (son numéro ou son nom : 95, Val-d'Oise)",
    f.ORGANISMES: (
        "À quel(s) organisme(s) s'adresse la demande ? (par exemple CAF, CPAM ; "
        "ou une catégorie comme Logement si vous ne savez pas)"
    ),
    f.CATEGORIE: "Quelle catégorie ? (Social/Famille, Santé/Handicap, Logement, Retraite…)",
    f.OBJET: (
        "Quel est l'objet de la demande, en quelques mots ? (aucune donnée personnelle : "
        "il apparaît dans les notifications)"
    ),
    f.PRENOM: "Quel est le prénom de l'usager ?",
    f.NOM: "Quel est le nom de l'usager ?",
    f.DATE_NAISSANCE: "Quelle est sa date de naissance ? (par exemple 12/03/1961)",
    f.NIR: "Quel est son numéro de sécurité sociale (NIR, 15 caractères) ?",
    f.ALLOCATAIRE: "Quel est son numéro allocataire CAF ?",
    f.NIF: "Quel est son numéro fiscal (13 chiffres) ?",
    f.ADRESSE: "Quelle est son adresse ?",
    f.TELEPHONE: "Quel est son numéro de téléphone ?",
    f.MANDAT: "Comment l'usager vous a-t-il donné son accord : papier, oral ou sms ?",
    f.DATE_MANDAT: (
        "Quel jour l'usager a-t-il donné son accord ? (une date, « aujourd'hui » ou « hier »)"
    ),
    f.DESCRIPTION: "Décrivez la situation et ce que vous attendez de l'organisme.",
    f.ACCORD: f"Confirmez-vous cette phrase : « {f.ATTESTATION} » ? (oui ou non)",
}

GUIDED_START = (
    "Je vous pose les questions une à une ; répondez simplement à chacune. "
    "!brouillon montre où vous en êtes, !annuler abandonne."
)


def question(
    field: str, problem: Problem | None = None, noted: str | None = None
) -> RenderedMessage:
    """The next question of the guided path, after what was wrong in the last answer."""
    head: list[str] = []
    if noted:
        head.append(f"C'est noté ({noted}).")
    if problem is not None:
        head.append(problem.message)
    head.append(QUESTIONS[field])
    return _message(head)


# --- short replies ---------------------------------------------------------------------

NOT_A_FORM = (
    "Je n'ai pas reconnu de formulaire dans votre message. Envoyez !demande pour "
    "recevoir le formulaire à remplir, ou !aide pour la liste des commandes."
)

YES_OR_NO = "Répondez par oui ou par non."
FILE_WITHOUT_DRAFT = (
    "J'ai reçu votre fichier, mais vous n'avez aucune demande en préparation : je ne l'ai "
    "pas gardé. Envoyez d'abord !demande (ou !guider), puis renvoyez le fichier : il sera "
    "joint à la demande."
)


def file_kept(line: str, count: int) -> str:
    total = "1 fichier joint" if count == 1 else f"{count} fichiers joints"
    return (
        f"Fichier {line} joint à la demande en préparation ({total}). Il sera publié, "
        "chiffré, dans le salon de la demande quand vous enverrez !confirmer."
    )


NOT_A_FORM_WITH_DRAFT = (
    "Je n'ai reconnu aucune ligne « champ : valeur » dans votre message. Pour compléter "
    "la demande en préparation, envoyez par exemple « nom : Dupont » ; !brouillon la "
    "montre, !guider vous pose les questions une à une."
)


def file_line(filename: str, size: int) -> str:
    """« courrier.pdf (20 Ko) »."""
    if size < 1024 * 1024:
        shown = f"{max(1, round(size / 1024))} Ko"
    else:
        shown = f"{size / (1024 * 1024):.1f} Mo".replace(".", ",")
    return f"{filename} ({shown})"
