"""French texts: dossier, recap, replies; HTML always escaped."""

from __future__ import annotations

from datetime import date
from html.parser import HTMLParser

from bot.domain.dossier import (
    CANCELLED,
    NOTHING_TO_CONFIRM,
    REFUSAL_NOT_AIDANT,
    REFUSAL_UNENCRYPTED_ROOM,
    ParticipantView,
    already_confirmed,
    demande_opened,
    demande_recorded,
    intruder_removed,
    opening_given_up_alert,
    opening_problem,
    plain,
    render_dossier,
    render_form_errors,
    render_form_template,
    render_recap,
)
from bot.domain.form import ATTESTATION, FORM_TEMPLATE, FormErrors
from bot.domain.model import DemandeForm, Mandat, MandatType, Status, Usager

SCRIPT = "<script>alert('x')</script>"

FORM = DemandeForm(
    territoire="95",
    organisations=("caf", "cpam"),
    categorie=None,
    objet="Rupture de droits & retard",
    usager=Usager(
        prenom="Jeanne",
        nom="Dupont",
        date_naissance=date(1980, 3, 5),
        nir="280039512345684",
        numero_allocataire_caf="1234567",
        adresse="12 rue des Lilas",
        telephone="06 12 34 56 78",
    ),
    description="Première ligne\nDeuxième ligne",
    mandat=Mandat(MandatType.PAPIER, date(2026, 3, 10), True),
)
AIDANT = ParticipantView("Marie Martin", "France Services", "FS Cergy")
PARTICIPANTS = [
    ParticipantView("Paul Durand", "CAF", "CAF 95 — prestations"),
    ParticipantView("Lucie Bernard", "CPAM", "CPAM 95", email_only=True),
]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector


def test_dossier_content() -> None:
    msg = render_dossier(
        "A-2026-000042",
        FORM,
        Status.NOUVELLE,
        PARTICIPANTS,
        AIDANT,
        organisation_names={"caf": "CAF", "cpam": "CPAM"},
    )
    for expected in (
        "Demande A-2026-000042",
        "Statut : nouvelle",
        "Territoire : 95",
        "Organismes : CAF, CPAM",
        "Objet : Rupture de droits & retard",
        "Prénom : Jeanne",
        "Nom : Dupont",
        "Date de naissance : 05/03/1980",
        "NIR : 2 80 03 95 123 456 84",
        "Numéro allocataire CAF : 1234567",
        "Adresse : 12 rue des Lilas",
        "Téléphone : 06 12 34 56 78",
        "Première ligne\nDeuxième ligne",
        "Type : papier (mandat écrit)",
        "Date : 10/03/2026",
        f"« {ATTESTATION} » : oui",
        "Aidant : Marie Martin — France Services · FS Cergy",
        "Paul Durand — CAF · CAF 95 — prestations",
        "Lucie Bernard — CPAM · CPAM 95 (par courriel)",
    ):
        assert expected in msg.body, expected
    assert "NIF" not in msg.body  # absent values are not listed
    assert "republié" not in msg.body
    html = parse_html(msg.formatted_body)
    assert "script" not in html.tags
    assert "Rupture de droits & retard" in "".join(html.text)
    assert "&amp;" in msg.formatted_body
    assert "Première ligne<br>Deuxième ligne" in msg.formatted_body


def test_dossier_status_and_repost() -> None:
    msg = render_dossier("A-2026-000042", FORM, Status.EN_COURS, [], AIDANT, repost=True)
    assert "Statut : en cours" in msg.body
    assert "republié" in msg.body
    assert "Organismes : caf, cpam" in msg.body  # ids when no names are given


def test_every_user_value_is_escaped() -> None:
    hostile = DemandeForm(
        territoire="95",
        organisations=(SCRIPT,),
        categorie=SCRIPT,
        objet=SCRIPT,
        usager=Usager(
            prenom=SCRIPT,
            nom=SCRIPT,
            date_naissance=date(1980, 3, 5),
            nir="280039512345684",
            numero_allocataire_caf=SCRIPT,
            nif=SCRIPT,
            adresse=SCRIPT,
            telephone=SCRIPT,
        ),
        description=f'{SCRIPT}\n<img src=x onerror="alert(1)">',
        mandat=Mandat(MandatType.ORAL, date(2026, 3, 10), True),
    )
    person = ParticipantView(SCRIPT, SCRIPT, SCRIPT, email_only=True)
    messages = [
        render_dossier(SCRIPT, hostile, Status.NOUVELLE, [person], person),
        render_recap(SCRIPT, hostile, [SCRIPT], [person], [person]),
        render_form_errors(FormErrors((SCRIPT,))),
        plain(SCRIPT),
    ]
    for msg in messages:
        tags = parse_html(msg.formatted_body).tags
        assert "script" not in tags
        assert "img" not in tags
        assert "<script>" not in msg.formatted_body
        assert "&lt;script&gt;" in msg.formatted_body
        assert SCRIPT in msg.body  # plain text keeps the value as typed


def test_recap() -> None:
    msg = render_recap(
        None,
        FORM,
        ["CAF 95 — prestations", "CPAM 95"],
        [PARTICIPANTS[0]],
        [PARTICIPANTS[1]],
        organisation_names={"caf": "CAF", "cpam": "CPAM"},
    )
    assert msg.body.startswith("Récapitulatif de la demande")
    assert "Groupes : CAF 95 — prestations, CPAM 95" in msg.body
    assert "Paul Durand — CAF · CAF 95 — prestations" in msg.body
    assert "Lucie Bernard — CPAM · CPAM 95 (par courriel)" in msg.body
    assert "Mandat : papier (mandat écrit), du 10/03/2026" in msg.body
    assert "NIR" not in msg.body  # the recap shows identity, not identifiers
    assert msg.body.endswith("Envoyez !confirmer pour ouvrir la demande, ou !annuler.")
    assert msg.formatted_body.endswith(
        "<p><strong>Envoyez !confirmer pour ouvrir la demande, ou !annuler.</strong></p>"
    )


def test_recap_without_groups_says_so() -> None:
    msg = render_recap("A-2026-000042", FORM, [], [], [])
    assert "Aucun groupe" in msg.body
    assert msg.body.startswith("Demande A-2026-000042 : récapitulatif")


def test_form_template_message_keeps_the_text_verbatim() -> None:
    msg = render_form_template()
    assert FORM_TEMPLATE in msg.body
    assert "<pre><code>" in msg.formatted_body
    assert "".join(parse_html(msg.formatted_body).text).endswith(FORM_TEMPLATE)


def test_form_errors_message_lists_every_problem() -> None:
    msg = render_form_errors(FormErrors(("Premier problème.", "Second problème.")))
    assert "2 points à corriger" in msg.body
    assert "- Premier problème.\n- Second problème." in msg.body
    assert parse_html(msg.formatted_body).tags.count("li") == 2


def test_content_shape() -> None:
    content = plain("Bonjour").content("m.notice")
    assert content == {
        "msgtype": "m.notice",
        "body": "Bonjour",
        "format": "org.matrix.custom.html",
        "formatted_body": "Bonjour",
    }


def test_short_texts() -> None:
    assert "aidants" in REFUSAL_NOT_AIDANT
    assert "chiffré" in REFUSAL_UNENCRYPTED_ROOM
    assert "données personnelles" in REFUSAL_UNENCRYPTED_ROOM
    assert demande_opened("A-2026-000042").startswith("Demande A-2026-000042 ouverte")
    assert "!demande" in NOTHING_TO_CONFIRM
    assert "annulée" in CANCELLED
    assert "@x:hs" in intruder_removed("@x:hs", banned=False)
    assert "bloqué" in intruder_removed("@x:hs", banned=True)


def test_the_opening_texts_never_promise_a_room_that_is_not_there() -> None:
    recorded = demande_recorded("A-2026-000042")
    assert recorded.startswith("Demande A-2026-000042 enregistrée")
    assert "ouverte" not in recorded and "en cours de création" in recorded
    assert "déjà ouverte" in already_confirmed("A-2026-000042", opened=True)
    waiting = already_confirmed("A-2026-000042", opened=False)
    assert "ouverte" not in waiting and "déjà enregistrée" in waiting
    for room_made in (False, True):
        told = opening_problem("A-2026-000042", room_made=room_made)
        assert "bien enregistrée" in told and "prévenue" in told and "rien à renvoyer" in told
    alert = opening_given_up_alert("A-2026-000042", 4, "MatrixError(403 M_FORBIDDEN)")
    assert "A-2026-000042" in alert and "4 tentative(s)" in alert and "M_FORBIDDEN" in alert
