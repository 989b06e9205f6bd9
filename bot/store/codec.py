"""JSON shapes of the encrypted payloads. Explicit, versioned by key names,
so a field added to the domain later does not silently break old rows."""

from __future__ import annotations

from datetime import date
from typing import Any

from bot.domain.model import DemandeForm, Mandat, MandatType, Usager


def usager_to_json(u: Usager) -> dict[str, Any]:
    return {
        "prenom": u.prenom,
        "nom": u.nom,
        "date_naissance": u.date_naissance.isoformat(),
        "nir": u.nir,
        "numero_allocataire_caf": u.numero_allocataire_caf,
        "nif": u.nif,
        "adresse": u.adresse,
        "telephone": u.telephone,
    }


def usager_from_json(d: dict[str, Any]) -> Usager:
    return Usager(
        prenom=d["prenom"],
        nom=d["nom"],
        date_naissance=date.fromisoformat(d["date_naissance"]),
        nir=d.get("nir"),
        numero_allocataire_caf=d.get("numero_allocataire_caf"),
        nif=d.get("nif"),
        adresse=d.get("adresse"),
        telephone=d.get("telephone"),
    )


def mandat_to_json(m: Mandat) -> dict[str, Any]:
    return {"type": m.type.value, "date": m.date.isoformat(), "attestation": m.attestation}


def mandat_from_json(d: dict[str, Any]) -> Mandat:
    return Mandat(
        type=MandatType(d["type"]),
        date=date.fromisoformat(d["date"]),
        attestation=bool(d["attestation"]),
    )


def dossier_to_json(form: DemandeForm) -> dict[str, Any]:
    """The part of a demande stored in `demandes.dossier_enc`."""
    return {
        "usager": usager_to_json(form.usager),
        "description": form.description,
        "mandat": mandat_to_json(form.mandat),
    }


def form_to_json(form: DemandeForm) -> dict[str, Any]:
    return {
        "territoire": form.territoire,
        "organisations": list(form.organisations),
        "categorie": form.categorie,
        "objet": form.objet,
        **dossier_to_json(form),
    }


def form_from_json(d: dict[str, Any]) -> DemandeForm:
    return DemandeForm(
        territoire=d["territoire"],
        organisations=tuple(d["organisations"]),
        categorie=d.get("categorie"),
        objet=d["objet"],
        usager=usager_from_json(d["usager"]),
        description=d["description"],
        mandat=mandat_from_json(d["mandat"]),
    )
