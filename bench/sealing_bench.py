"""CPU per delivery signature, plain secret vs sealed secret (unseal + sign), alternated
in one run:

    PYTHONPATH=. DJANGO_SETTINGS_MODULE=clinik.settings .venv/bin/python bench/sealing_bench.py
"""

import time

import django

django.setup()

from clinik.lib import webhooks  # noqa: E402
from clinik.subscriptions import sealing  # noqa: E402

N = 20000
PLAIN = sealing.new_secret()
SEALED = sealing.seal(PLAIN)
BODY = b"x" * 600  # an id-only notification Bundle is about this size


def cpu_us(sealed: bool) -> float:
    start = time.process_time()
    for _ in range(N):
        webhooks.sign(sealing.unseal(SEALED) if sealed else PLAIN, BODY, 1)
    return (time.process_time() - start) / N * 1e6


if __name__ == "__main__":
    for _ in range(3):
        print(f"plain {cpu_us(False):.1f} us CPU, sealed {cpu_us(True):.1f} us CPU per signature")
