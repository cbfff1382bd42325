"""Site governance: the policy a site enforces on the tasks it is sent (and, next, its audit trail)."""
