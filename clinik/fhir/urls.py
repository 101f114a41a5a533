from django.urls import path, re_path, register_converter

from clinik.fhir import export_views, views


class ResourceTypeConverter:
    regex = "[A-Z][A-Za-z]{1,63}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class FhirIdConverter:
    regex = r"[A-Za-z0-9\-\.]{1,64}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ResourceTypeConverter, "rtype")
register_converter(FhirIdConverter, "fid")

urlpatterns = [
    # The busiest routes first: Django tries patterns in order, and no other pattern
    # matches what these two do (a type starts with a capital letter; an id has no
    # "_", "$" or "/"), so their place changes nothing but the time to resolve.
    path("<rtype:resource_type>", views.type_root, name="fhir_type"),
    path("<rtype:resource_type>/<fid:resource_id>", views.instance, name="fhir_instance"),
    path("", views.base, name="fhir_base"),
    path("metadata", views.metadata, name="fhir_metadata"),
    path("$export", export_views.export_system, name="fhir_export"),
    path("$export-poll-status", export_views.export_status, name="fhir_export_status"),
    path("$export-file", export_views.export_file, name="fhir_export_file"),
    path("Patient/$export", export_views.export_patient, name="fhir_export_patient"),
    path("Group/<fid:group_id>/$export", export_views.export_group, name="fhir_export_group"),
    path("_history", views.history, name="fhir_history_system"),
    path("_search", views.system_search, name="fhir_system_search"),
    path("<rtype:resource_type>/_history", views.history, name="fhir_history_type"),
    path("<rtype:resource_type>/_search", views.type_search, name="fhir_type_search"),
    path(
        "<rtype:resource_type>/<fid:resource_id>/_history",
        views.history,
        name="fhir_history_instance",
    ),
    path(
        "<rtype:resource_type>/<fid:resource_id>/_history/<str:version_id>",
        views.vread,
        name="fhir_vread",
    ),
    path("<rtype:resource_type>/<fid:resource_id>/$expunge", views.expunge, name="fhir_expunge"),
    path(
        "<rtype:compartment>/<fid:resource_id>/<rtype:resource_type>",
        views.compartment_search,
        name="fhir_compartment",
    ),
    path(
        "<rtype:compartment>/<fid:resource_id>/*",
        views.compartment_search,
        name="fhir_compartment_all",
    ),
    path(
        "<rtype:compartment>/<fid:resource_id>/<rtype:resource_type>/_search",
        views.compartment_search_form,
        name="fhir_compartment_search",
    ),
    path(
        "<rtype:compartment>/<fid:resource_id>/_search",
        views.compartment_search_form,
        name="fhir_compartment_search_all",
    ),
    # Anything else under the base: an OperationOutcome, never an HTML page.
    re_path(r"^.*$", views.unknown_route, name="fhir_unknown"),
]
