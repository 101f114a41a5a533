import os

from django.core.wsgi import get_wsgi_application

from clinik.lib.serverenv import without_process_environment

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")

application = without_process_environment(get_wsgi_application())

# A HealthLake store is described and checked now: a datastore that may not hold our
# PHI (not ACTIVE, not R4, no customer-managed key in production) stops start-up.
from clinik.fhir.store import get_store  # noqa: E402

get_store()
