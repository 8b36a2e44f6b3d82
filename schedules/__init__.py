"""The scheduler process (`python -m schedules`): sends the periodic actors on their interval or
cron, safe with several replicas; also runs the outbox relay loop (OUTBOX_RELAY_LOOP)."""
