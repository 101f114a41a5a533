"""Service emails (security, billing, service, policy), incidents and the status page.

The public entry point for every email ClinikAPI sends is `clinik.notify.emails.send`:

    from clinik.notify.emails import send
    send("security", "key-created", owners, {"key_name": key.name, ...})

- `kind`: "security", "billing", "service" or "policy". All four are essential
  (account, security and legal notices): nobody can unsubscribe from them, and the
  page that lists them (/emails) says so.
- `template`: a name in `clinik.notify.emails.CATALOGUE`, rendered from
  templates/emails/<template>-subject.txt, -body.txt and -body.html. A new email adds
  its line to the catalogue (kind and when it is sent) and its three templates.
- `to`: a User, an email address (someone without an account, e.g. an invitee), or a
  list of them; duplicates are sent once.
- `context`: JSON-serializable values for the templates. Never PHI: no resource
  content, search values, FHIR query strings or resource ids.

Call it inside the transaction that made the change: one `EmailRecord` per recipient
(kind, template, recipient user, time, status; never the body) is written in that
transaction and the Celery task `deliver_email` is queued on commit, so a rollback
sends nothing and the request never waits for SMTP. The task retries with
exponential backoff (EMAIL_MAX_RETRIES, EMAIL_RETRY_BASE_SECONDS); a record left
`failed` is visible in the admin. `send_now(...)` (same arguments) sends in the
current process, for jobs that already run in a worker.

Security alerts: `clinik.notify.security` (new sign-in from an unknown browser or
network, lockout, password/email change, member and owner changes).
"""
