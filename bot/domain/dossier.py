"""French texts of the bot: the dossier of a demande, the recap before
`!confirmer`, and the short replies and notices.

Every message has a plain `body` and an HTML `formatted_body`; every value that
comes from a user goes through `html.escape`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from bot.domain.form import ATTESTATION, FormErrors, form_template, format_date
from bot.domain.model import DemandeForm, MandatType, Status, Usefulness


@dataclass(frozen=True, slots=True)
class ParticipantView:
    display_name: str
    organisation_name: str | None = None
    group_name: str | None = None
    email_only: bool = False


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    body: str
    formatted_body: str

    def content(self, msgtype: str = "m.text") -> dict[str, str]:
        """An `m.room.message` content."""
        return {
            "msgtype": msgtype,
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.formatted_body,
        }


def _e(value: str) -> str:
    return escape(value, quote=True)


_MANDAT_LABELS: dict[MandatType, str] = {
    MandatType.PAPIER: "papier (mandat écrit)",
    MandatType.ORAL: "oral",
    MandatType.SMS: "SMS",
}

USEFULNESS_LABELS: dict[Usefulness, str] = {
    Usefulness.UTILE: "oui",
    Usefulness.NESAISPAS: "je ne sais pas",
    Usefulness.INUTILE: "non",
}


def _nir_display(nir: str) -> str:
    # The groups printed on the carte Vitale: 1 80 02 75 123 456 78.
    cuts = (1, 3, 5, 7, 10, 13)
    parts, start = [], 0
    for cut in cuts:
        parts.append(nir[start:cut])
        start = cut
    parts.append(nir[start:])
    return " ".join(p for p in parts if p)


def _participant_line(p: ParticipantView) -> str:
    where = " · ".join(x for x in (p.organisation_name, p.group_name) if x)
    line = p.display_name + (f" — {where}" if where else "")
    return line + (" (par courriel)" if p.email_only else "")


class _Doc:
    """Builds the plain and HTML versions side by side so they never diverge."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.html: list[str] = []
        self._items: list[str] | None = None

    def para(self, text: str, *, strong: bool = False) -> None:
        self._close()
        self.text.extend(["", text])
        inner = f"<strong>{_e(text)}</strong>" if strong else _e(text)
        self.html.append(f"<p>{inner}</p>")

    def title(self, text: str) -> None:
        self._close()
        self.text.extend(["", text.upper()])
        self.html.append(f"<h4>{_e(text)}</h4>")

    def item(self, label: str, value: str) -> None:
        if self._items is None:
            self._items = []
        self.text.append(f"- {label} : {value}")
        self._items.append(f"<li><strong>{_e(label)} :</strong> {_e(value)}</li>")

    def bullet(self, value: str) -> None:
        if self._items is None:
            self._items = []
        self.text.append(f"- {value}")
        self._items.append(f"<li>{_e(value)}</li>")

    def block(self, text: str) -> None:
        self._close()
        self.text.append(text)
        self.html.append("<p>" + "<br>".join(_e(line) for line in text.split("\n")) + "</p>")

    def _close(self) -> None:
        if self._items is not None:
            self.html.append("<ul>" + "".join(self._items) + "</ul>")
            self._items = None

    def render(self) -> RenderedMessage:
        self._close()
        return RenderedMessage("\n".join(self.text).strip("\n"), "".join(self.html))


def _organisations(form: DemandeForm, names: Mapping[str, str] | None) -> str:
    labels = [(names or {}).get(o, o) for o in form.organisations]
    return ", ".join(labels)


def _usager(doc: _Doc, form: DemandeForm, *, full: bool) -> None:
    u = form.usager
    doc.title("Usager")
    doc.item("Prénom", u.prenom)
    doc.item("Nom", u.nom)
    doc.item("Date de naissance", format_date(u.date_naissance))
    if not full:
        return
    optional = (
        ("NIR", _nir_display(u.nir) if u.nir else None),
        ("Numéro allocataire CAF", u.numero_allocataire_caf),
        ("NIF", u.nif),
        ("Adresse", u.adresse),
        ("Téléphone", u.telephone),
    )
    for label, value in optional:
        if value:
            doc.item(label, value)


def _mandat(doc: _Doc, form: DemandeForm) -> None:
    doc.title("Mandat")
    doc.item("Type", _MANDAT_LABELS[form.mandat.type])
    doc.item("Date", format_date(form.mandat.date))
    attested = "oui" if form.mandat.attestation else "non"
    doc.item("Attestation", f"« {ATTESTATION} » : {attested}")


def render_dossier(
    reference: str,
    form: DemandeForm,
    status: Status,
    participants: Sequence[ParticipantView],
    aidant: ParticipantView,
    *,
    repost: bool = False,
    organisation_names: Mapping[str, str] | None = None,
) -> RenderedMessage:
    """The dossier posted first in the room, and re-posted for later participants."""
    doc = _Doc()
    doc.para(f"Demande {reference}", strong=True)
    if repost:
        doc.para(
            "Dossier republié pour les participants arrivés après l'ouverture ; "
            "les messages échangés avant leur arrivée leur sont recopiés à la suite."
        )
    doc.item("Statut", status.label)
    doc.item("Territoire", form.territoire)
    if form.organisations:
        doc.item("Organismes", _organisations(form, organisation_names))
    if form.categorie:
        doc.item("Catégorie", form.categorie)
    doc.item("Objet", form.objet)
    _usager(doc, form, full=True)
    doc.title("Description")
    doc.block(form.description)
    _mandat(doc, form)
    doc.title("Participants")
    doc.item("Aidant", _participant_line(aidant))
    for participant in participants:
        doc.bullet(_participant_line(participant))
    return doc.render()


def render_recap(
    reference: str | None,
    form: DemandeForm,
    groups: Sequence[str],
    invitees: Sequence[ParticipantView],
    email_only: Sequence[ParticipantView],
    *,
    organisation_names: Mapping[str, str] | None = None,
    left_out: Sequence[str] = (),
    understood: Sequence[str] = (),
    files: Sequence[str] = (),
    advice: Sequence[str] = (),
    categorie_label: str | None = None,
    by_email: Sequence[str] = (),
) -> RenderedMessage:
    """What will happen on `!confirmer`: who receives the demande, and how.

    `left_out`: agents of the routed groups who will not receive it, each with why.
    `understood`: how the values written freely were read (« hier » → 01/12/2026), so
    that the aidant checks them before confirming. `files`: the files that will be
    posted in the room. `advice`: identifiers the organisations would find useful.
    `by_email`: who will get the dossier by email (and whether in full).
    """
    doc = _Doc()
    title = f"Demande {reference} : récapitulatif" if reference else "Récapitulatif de la demande"
    doc.para(title, strong=True)
    doc.item("Territoire", form.territoire)
    if form.organisations:
        doc.item("Organismes", _organisations(form, organisation_names))
    if form.categorie:
        doc.item("Catégorie", categorie_label or form.categorie)
    doc.item("Objet", form.objet)
    doc.item("Mandat", f"{_MANDAT_LABELS[form.mandat.type]}, du {format_date(form.mandat.date)}")
    _usager(doc, form, full=False)
    if understood:
        doc.title("Ce que j'ai compris (vérifiez)")
        for line in understood:
            doc.bullet(line)
    if files:
        doc.title("Fichiers joints (publiés dans le salon de la demande)")
        for name in files:
            doc.bullet(name)
    if advice:
        doc.title("Conseillé")
        for line in advice:
            doc.bullet(line)
    doc.title("Destinataires")
    if groups:
        doc.item("Groupes", ", ".join(groups))
    else:
        doc.bullet("Aucun groupe ne traite encore ces organismes sur ce territoire.")
    if invitees:
        doc.para("Invités dans le salon de la demande (ils la lisent dans Element) :")
    for participant in invitees:
        doc.bullet(_participant_line(participant))
    if email_only:
        doc.para("Reçoivent le dossier par courriel (ils répondent par courriel) :")
    for participant in email_only:
        line = _participant_line(participant)
        doc.bullet(line if participant.email_only else line + " (par courriel)")
    if by_email:
        doc.title("Dossier envoyé par courriel à")
        for line in by_email:
            doc.bullet(line)
        doc.para(
            "Ces courriels restent dans les messageries de leurs destinataires : "
            "l'effacement des données de la demande ne les atteint pas."
        )
    if left_out:
        doc.title("Ne recevront pas la demande")
        for line in left_out:
            doc.bullet(line)
    doc.para("Envoyez !confirmer pour ouvrir la demande, ou !annuler.", strong=True)
    return doc.render()


def render_form_template() -> RenderedMessage:
    """The blank form, in a code block so that copying it keeps every line as is."""
    template = form_template()
    intro = "Copiez le formulaire ci-dessous, complétez-le et renvoyez-le dans ce salon."
    return RenderedMessage(
        f"{intro}\n\n{template}",
        f"<p>{_e(intro)}</p><pre><code>{_e(template)}</code></pre>",
    )


def render_form_errors(errors: FormErrors) -> RenderedMessage:
    doc = _Doc()
    count = len(errors.messages)
    doc.para(
        "Le formulaire n'a pas pu être accepté"
        + (f" ({count} points à corriger) :" if count > 1 else " :"),
        strong=True,
    )
    for message in errors.messages:
        doc.bullet(message)
    doc.para("Corrigez-le et renvoyez le formulaire complet.")
    return doc.render()


def plain(text: str) -> RenderedMessage:
    return RenderedMessage(text, _e(text))


# ---------------------------------------------------------------------------
# Short replies

REFUSAL_NOT_AIDANT = (
    "Seuls les aidants peuvent ouvrir une demande. Si vous pensez être aidant, "
    "demandez au responsable de votre structure de vérifier votre compte."
)
REFUSAL_UNENCRYPTED_ROOM = (
    "Ce salon n'est pas chiffré de bout en bout : je ne traite pas de formulaire ici, "
    "car il contient des données personnelles de l'usager (identité, NIR, adresse…). "
    "Supprimez votre message, puis ouvrez avec moi une discussion privée chiffrée "
    "et envoyez-y !demande."
)
ALREADY_CONFIRMED = "Cette demande est déjà ouverte : il n'y a plus rien à confirmer."
NOTHING_TO_CONFIRM = (
    "Il n'y a rien à confirmer : envoyez d'abord !demande, puis le formulaire complété."
)
NOTHING_TO_CANCEL = "Il n'y a aucune demande en préparation à annuler."
CANCELLED = "Demande annulée : rien n'a été envoyé. Envoyez !demande pour recommencer."


def demande_opened(reference: str) -> str:
    """To the aidant, once the room exists and they are invited (never before)."""
    return (
        f"Demande {reference} ouverte. Vous avez été invité(e) dans son salon : "
        "la suite des échanges se fait là-bas."
    )


def demande_recorded(reference: str) -> str:
    """To the aidant, when the room could not be made at once (the service tries again)."""
    return (
        f"Demande {reference} enregistrée : son salon est en cours de création, "
        "vous y serez invité(e) dès qu'il sera prêt."
    )


def already_confirmed(reference: str, *, opened: bool) -> str:
    if opened:
        return f"La demande {reference} est déjà ouverte : il n'y a plus rien à confirmer."
    return (
        f"La demande {reference} est déjà enregistrée : il n'y a plus rien à confirmer, "
        "son salon est en cours de création."
    )


def intruder_removed(user_id: str, *, banned: bool) -> str:
    """Notice for the room when the bot removed someone who had no business there."""
    if banned:
        return (
            f"{user_id} a de nouveau tenté d'accéder à cette demande sans y être autorisé(e) : "
            "son accès est désormais bloqué."
        )
    return (
        f"{user_id} a été retiré(e) de cette demande : seuls les participants désignés "
        "par le service peuvent y être."
    )


# ---------------------------------------------------------------------------
# Status notices and refusals (used by bot.domain.status)


def invite_failed(user_id: str, *, server_refused: bool) -> str:
    """Notice for the room when an invitation could not be sent, for good."""
    if server_refused:
        why = "son serveur Matrix n'est pas autorisé pour ce service"
    else:
        why = "le serveur a refusé l'invitation à plusieurs reprises"
    return (
        f"L'invitation de {user_id} n'a pas pu être envoyée ({why}). L'équipe du service "
        "est prévenue ; en attendant, cette personne ne voit pas la demande."
    )


def event_given_up(sender_name: str, reference: str, *, is_file: bool) -> str:
    """Notice for the room when one of its messages could not be handled, for good."""
    what = "La pièce jointe envoyée" if is_file else "Un message envoyé"
    return (
        f"{what} par {sender_name} n'a pas pu être pris en compte par le service "
        f"(référence {reference}) : s'il contenait une commande ou un document à "
        "transmettre, renvoyez-le. Le reste de la demande n'est pas concerné."
    )


def opening_problem(reference: str, *, room_made: bool = False) -> str:
    """To the aidant, when the service stopped trying to make the room on its own."""
    what = "n'a pas pu être préparé jusqu'au bout" if room_made else "n'a pas pu être créé"
    return (
        f"Le salon de la demande {reference} {what}. Votre demande est bien enregistrée "
        "et l'équipe du service est prévenue : vous serez invité(e) dans son salon dès "
        "que le problème sera réglé. Vous n'avez rien à renvoyer."
    )


def opening_given_up_alert(reference: str, attempts: int, cause: str) -> str:
    """To the operators (admin room): the reference and the error code, no personal data."""
    return (
        f"Le salon de la demande {reference} n'a pas pu être créé ({cause} ; "
        f"{attempts} tentative(s)). L'aidant est prévenu qu'il n'a rien à renvoyer. Le "
        "service réessaiera toutes les heures ; vérifiez l'annuaire, les politiques "
        "(serveurs autorisés, comptes des instructeurs) et la configuration du bot "
        "(version de salon)."
    )


def opening_solved_alert(reference: str) -> str:
    return (
        f"Le salon de la demande {reference} a finalement été créé : l'aidant et les "
        "instructeurs y sont invités."
    )


NOTICE_EN_COURS = "La demande passe au statut « en cours » : un instructeur a répondu."
# The same words as `!clore` takes (and the poll and the reactions offer).
CLOSE_HINT = (
    "Si la réponse convient, l'aidant peut clore la demande : la réponse est-elle utile "
    "pour l'usager ? Répondez au sondage, réagissez à ce message (👍 oui, 👎 non, "
    "🤷 je ne sais pas) ou écrivez !clore oui, !clore non ou !clore je ne sais pas."
)
NOTICE_TRAITEE = f"La demande est marquée « traitée ». {CLOSE_HINT}"
REFUSAL_ALREADY_TREATED = "La demande est déjà marquée comme traitée."
REFUSAL_TREAT_CLOSED = (
    "La demande est clôturée : rouvrez-la avec !rouvrir avant de la marquer comme traitée."
)
REFUSAL_ALREADY_CLOSED = "La demande est déjà clôturée."


def notice_closed(usefulness: Usefulness) -> str:
    return (
        f"La demande est clôturée. Réponse utile pour l'usager : {USEFULNESS_LABELS[usefulness]}."
    )


def refusal_not_closed(status: Status) -> str:
    return f"La demande n'est pas clôturée (statut « {status.label} ») : il n'y a rien à rouvrir."


def notice_reopened(status: Status) -> str:
    return f"La demande est rouverte (statut « {status.label} »)."


def notice_reopened_by_message(status: Status) -> str:
    return (
        f"La demande est rouverte par un nouveau message de l'aidant (statut « {status.label} »)."
    )
