"""Request logs, error logs, rollups and the Usage page (policy §3, §4, §6)."""
