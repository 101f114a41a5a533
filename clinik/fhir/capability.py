"""The CapabilityStatement, generated from the resource table and the store's declared
features so it stays in step with the code."""

from functools import cache
from typing import Any

import orjson

from clinik.fhir.search import compartments, registry
from clinik.fhir.spec import FHIR_VERSION, RESOURCE_TYPES
from clinik.fhir.store import get_store

SOFTWARE_VERSION = "0.1.0"


def _search_params(
    resource_type: str, unsupported: frozenset[tuple[str, str]] = frozenset()
) -> list[dict[str, Any]]:
    """The R4 parameters this type can be searched by, as the registry compiled them,
    less those the active store cannot answer."""
    return [
        {"name": p.code, "definition": p.url, "type": p.type}
        for p in registry.searchable(resource_type)
        if (resource_type, p.code) not in unsupported
    ]


def _includes(resource_type: str) -> list[str]:
    return [
        f"{resource_type}:{p.code}"
        for p in registry.searchable(resource_type)
        if p.type == "reference"
    ]


def _revincludes(resource_type: str) -> list[str]:
    return sorted(
        f"{p.resource_type}:{p.code}"
        for source in RESOURCE_TYPES
        for p in registry.searchable(source)
        if p.type == "reference" and (not p.targets or resource_type in p.targets)
    )


SUBSCRIPTION_DOCUMENTATION = (
    "rest-hook channel only; channel.payload empty (id-only notification) or"
    " application/fhir+json; the server sets status active or error (with error) after"
    " checking, error after repeated delivery failures, off on 410 Gone"
)


def statement(base: str) -> dict[str, Any]:
    features = get_store().features
    codes = [*features.interactions, *(["search-type"] if features.search else [])]
    interactions = [{"code": code} for code in codes]
    resources = [
        {
            "type": resource_type,
            "interaction": interactions,
            "versioning": "versioned-update",
            "readHistory": features.history,
            "updateCreate": features.update_create,
            "conditionalCreate": features.conditional_update,
            "conditionalRead": "full-support",
            "conditionalUpdate": features.conditional_update,
            "conditionalDelete": "multiple" if features.conditional_update else "not-supported",
            "searchParam": [
                *(
                    _search_params(resource_type, features.unsupported_params)
                    if features.search
                    else []
                ),
                {
                    "name": "_count",
                    "type": "number",
                    "documentation": f"Page size (default 20, at most {features.max_count:,})",
                },
            ],
            **(
                {
                    "searchInclude": ["*", *_includes(resource_type)],
                    "searchRevInclude": _revincludes(resource_type),
                }
                if features.search
                else {}
            ),
            "operation": [
                {
                    "name": "expunge",
                    "definition": "https://clinikapi.com/fhir/OperationDefinition/expunge",
                    "documentation": "Erase every version of one resource for good, at once",
                }
            ]
            if features.expunge
            else [],
        }
        for resource_type in sorted(RESOURCE_TYPES)
        if resource_type != "Subscription" or features.subscriptions
    ]
    for resource in resources:
        if resource["type"] == "Subscription":
            resource["documentation"] = SUBSCRIPTION_DOCUMENTATION
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-27",
        "publisher": "ClinikAPI",
        "kind": "instance",
        "software": {"name": "ClinikAPI", "version": SOFTWARE_VERSION},
        "implementation": {"description": "ClinikAPI FHIR R4 API", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": True,
                    "description": "Authorization: Bearer <API key> from the dashboard",
                },
                **(
                    {"compartment": sorted(d.url for d in compartments.definitions().values())}
                    if "compartment" in features.search_features
                    else {}
                ),
                "resource": resources,
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                        "documentation": (
                            "Bulk Data export of the organization, Patient and Group."
                            " Kick-off parameters: _type, _since, _outputFormat"
                            " (application/fhir+ndjson) and _typeFilter (several per type"
                            " are ORed); _elements, patient, includeAssociatedData,"
                            " organizeOutputBy and allowPartialManifests are not supported"
                            " (400, or ignored with Prefer: handling=lenient)"
                        ),
                    }
                ],
                "interaction": [
                    *([{"code": "history-system"}] if features.system_history else []),
                    *(
                        [{"code": "transaction"}, {"code": "batch"}]
                        if features.transactions
                        else []
                    ),
                    *([{"code": "search-system"}] if features.search else []),
                ],
                **(
                    {
                        "searchParam": [
                            {"name": p.code, "definition": p.url, "type": p.type}
                            for p in registry.searchable("Patient")
                            if p.code in registry.COMMON
                        ]
                    }
                    if features.search
                    else {}
                ),
            }
        ],
    }


@cache
def statement_json(base: str) -> bytes:
    return orjson.dumps(statement(base))
