"""The welcome a new agent gets from the bot, once (pure: French texts, no I/O).

With a Matrix account, in their private chat with the bot: who the service is, what
their role means, how to set up Element and verify their session. Email-only, by email:
what they will receive and how to answer. Short, plain, without any usager's data.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.model import Agent, Role

EMAIL_SUBJECT = "Bienvenue sur Administration+"

SERVICE = (
    "Administration+ est la messagerie sécurisée des services publics : les aidants "
    "(France services, travailleurs sociaux) y soumettent les situations urgentes des "
    "usagers aux organismes (CAF, CPAM, MSA, impôts, France Travail…), qui y répondent. "
    "Je suis le robot du service : j'ouvre les salons des demandes et j'y invite les "
    "bonnes personnes."
)


@dataclass(frozen=True, slots=True)
class WelcomeFacts:
    """What the welcome names: the agent, their group, where to go."""

    agent: Agent
    group_name: str | None
    client_url: str | None  # the agents' Element
    admin_room_name: str


def _group(facts: WelcomeFacts) -> str:
    return f" du groupe « {facts.group_name} »" if facts.group_name else ""


def _roles_matrix(facts: WelcomeFacts) -> list[str]:
    agent = facts.agent
    out = []
    if agent.has(Role.AIDANT):
        out.append(
            "Vous êtes aidant(e). Pour ouvrir une demande, écrivez-moi !demande ici : je vous "
            "envoie le formulaire, vous me le renvoyez rempli, je vous montre un "
            "récapitulatif, puis !confirmer ouvre la demande dans un salon à son nom."
        )
    if agent.has(Role.INSTRUCTEUR):
        out.append(
            f"Vous êtes instructeur(rice){_group(facts)}. Quand une demande est adressée à "
            "votre groupe, je vous invite dans son salon « Demande A-… » : acceptez "
            "l'invitation, le dossier y est affiché. Réponses rapides dans le salon : "
            "!jemenoccupe, !traitee, !pasleboninterlocuteur ; !aide les explique."
        )
    if agent.has(Role.RESPONSABLE):
        out.append(
            f"Vous êtes responsable{_group(facts)}. Cette discussion est votre salon de "
            "suivi : je vous y signale les demandes en retard de votre groupe. !mongroupe "
            "y montre ses demandes, ses statistiques et son export ; vous pouvez y ajouter "
            "ou désactiver un agent de votre groupe (!aide)."
        )
    if agent.has(Role.OPERATEUR):
        out.append(
            f"Vous êtes opérateur(rice) du service : je vous invite dans le salon "
            f"« {facts.admin_room_name} », où !aide liste les commandes."
        )
    return out


def _element(facts: WelcomeFacts) -> str:
    where = f" ({facts.client_url})" if facts.client_url else ""
    return (
        f"Pour travailler : Element{where}, sur ordinateur ou téléphone. À la première "
        "connexion, Element vous fait créer une clé de récupération : gardez-la en lieu "
        "sûr. Sur chaque nouvel appareil, vérifiez la session (depuis une session déjà "
        "vérifiée, ou avec la clé de récupération) : une session non vérifiée ne peut "
        "pas lire les demandes."
    )


def matrix_welcome(facts: WelcomeFacts) -> str:
    lines = [f"Bienvenue sur Administration+, {facts.agent.first_name}.", SERVICE]
    lines += _roles_matrix(facts)
    lines.append(_element(facts))
    return "\n\n".join(lines)


def email_welcome(facts: WelcomeFacts) -> str:
    agent = facts.agent
    lines = [
        f"Bonjour {agent.first_name},",
        f"vous êtes inscrit(e){_group(facts)} sur Administration+. {SERVICE}",
        "Ce que vous recevrez : par courriel, le dossier de chaque demande adressée à "
        "votre groupe, puis chaque message échangé dans la demande.",
        "Pour répondre : répondez simplement au courriel de la demande (chaque demande a "
        "sa propre adresse de réponse) ; votre réponse est transmise aux participants. "
        "Une première ligne !jemenoccupe, !traitee ou !pasleboninterlocuteur vaut "
        "réponse rapide.",
    ]
    if facts.client_url:
        lines.append(
            f"Vous pouvez aussi vous connecter avec votre compte d'agent de l'État "
            f"(ProConnect) sur {facts.client_url} : vos demandes vous y attendront."
        )
    return "\n\n".join(lines)
