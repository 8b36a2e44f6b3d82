"""atelier's Dramatiq broker and consumer classes: the one place that builds on Dramatiq's internals
(private consumers, the Redis broker's scripts and ack sets). Nothing here knows a capability."""
