import os

from django.core.wsgi import get_wsgi_application

from clinik.lib.serverenv import without_process_environment

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")

application = without_process_environment(get_wsgi_application())
